//! The probe itself; see the crate docs in `main.rs`.

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// The exit code of a mode that saw something it did not expect.
const WRONG: u8 = 99;

pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("", String::as_str);
    let rest = args.get(2..).unwrap_or_default();
    match mode {
        "args" => print_lines(args.iter()),
        "env" => {
            print_lines(std::env::vars().map(|(key, value)| format!("{key}={value}")).collect::<BTreeSet<_>>().iter())
        }
        "exit" => std::process::exit(rest.first().and_then(|code| code.parse().ok()).unwrap_or(i32::from(WRONG))),
        "exit-with-code" => raw::exit_with_code(rest.first().and_then(|code| code.parse().ok()).unwrap_or(WRONG)),
        "leave-link" => match raw::symlink("made-up", "/link") {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                println!("leave-link: {err}");
                ExitCode::from(WRONG)
            }
        },
        "stdin" => stdin(),
        "clocks-random" => clocks_random(),
        "preopens" => print_lines(raw::preopens().iter()),
        "walk" => walk(),
        "disk-bomb" => disk_bomb(),
        "file-bomb" => file_bomb(),
        "folder-bomb" => folder_bomb(),
        "memory-bomb" => memory_bomb(),
        "spin" => spin(),
        "sleep" => {
            std::thread::sleep(Duration::from_millis(number(rest)));
            ExitCode::SUCCESS
        }
        "stdout-flood" => flood(&mut std::io::stdout(), number(rest)),
        "stderr-flood" => flood(&mut std::io::stderr(), number(rest)),
        "trap" => panic!("wasi_probe was asked to trap"),
        _ => {
            eprintln!("usage: wasi_probe MODE [ARGS...] (unknown mode {mode:?})");
            ExitCode::from(2)
        }
    }
}

fn number(rest: &[String]) -> u64 {
    rest.first().and_then(|n| n.parse().ok()).unwrap_or(0)
}

fn print_lines<T: std::fmt::Display>(lines: impl Iterator<Item = T>) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        if writeln!(stdout, "{line}").is_err() {
            return ExitCode::from(WRONG);
        }
    }
    ExitCode::SUCCESS
}

fn stdin() -> ExitCode {
    let mut read = Vec::new();
    match std::io::stdin().read_to_end(&mut read) {
        Ok(n) => {
            println!("stdin: {n} bytes");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("stdin: {err}");
            ExitCode::from(WRONG)
        }
    }
}

fn clocks_random() -> ExitCode {
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(5));
    let monotonic_ok = start.elapsed() >= Duration::from_millis(5);
    let wall_ok =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).is_ok_and(|since| since.as_secs() > 1_600_000_000);
    let random = raw::random_bytes();
    let random_ok = random.iter().any(|&b| b != 0) && random != raw::random_bytes();
    println!("monotonic {monotonic_ok}, wall {wall_ok}, random {random_ok}");
    if monotonic_ok && wall_ok && random_ok { ExitCode::SUCCESS } else { ExitCode::from(WRONG) }
}

/// Walks and changes the seeded folder the way a real tool would, checking
/// every answer: the seed's files are there with their contents, and
/// renames, hard links, symlinks, truncation and removal inside `/` work.
fn walk() -> ExitCode {
    match walk_checked() {
        Ok(transcript) => {
            print!("{transcript}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            println!("walk: {err}");
            ExitCode::from(WRONG)
        }
    }
}

fn walk_checked() -> Result<String, String> {
    use std::fs;
    let step = |what: &str, result: std::io::Result<()>| result.map_err(|err| format!("{what}: {err}"));
    let mut transcript = String::new();
    let seeded = fs::read_to_string("/data/in.txt").map_err(|err| format!("read /data/in.txt: {err}"))?;
    transcript.push_str(&format!("seeded: {}\n", seeded.trim_end()));
    step("mkdir /made/deep", fs::create_dir_all("/made/deep"))?;
    step("write /made/deep/a.txt", fs::write("/made/deep/a.txt", seeded.to_uppercase()))?;
    step("rename a.txt -> b.txt", fs::rename("/made/deep/a.txt", "/made/b.txt"))?;
    step("hard link b.txt -> c.txt", fs::hard_link("/made/b.txt", "/made/c.txt"))?;
    let links = raw::link_count("/made/c.txt").map_err(|err| format!("stat c.txt: {err}"))?;
    if links != 2 {
        return Err(format!("c.txt has {links} links, not 2"));
    }
    raw::symlink("b.txt", "/made/to-b").map_err(|err| format!("symlink to-b: {err}"))?;
    let target = fs::read_link("/made/to-b").map_err(|err| format!("readlink to-b: {err}"))?;
    let through = fs::read_to_string("/made/to-b").map_err(|err| format!("read through to-b: {err}"))?;
    transcript.push_str(&format!("to-b -> {} reads {}\n", target.display(), through.trim_end()));
    raw::symlink("missing", "/made/dangling").map_err(|err| format!("symlink dangling: {err}"))?;
    if fs::metadata("/made/dangling").is_ok() || fs::symlink_metadata("/made/dangling").is_err() {
        return Err("a dangling symlink must exist as a link and fail to follow".into());
    }
    if raw::symlink("/etc/passwd", "/made/escape").is_ok() && fs::read("/made/escape").is_ok() {
        return Err("an absolute symlink was followed out of the sandbox".into());
    }
    if fs::read("/../../etc/passwd").is_ok() || fs::read_dir("/..").is_ok_and(|mut dir| dir.next().is_some()) {
        return Err("`..` left the sandbox".into());
    }
    let file = fs::OpenOptions::new().write(true).open("/made/b.txt").map_err(|err| format!("open b.txt: {err}"))?;
    step("truncate b.txt", file.set_len(2))?;
    drop(file);
    let short = fs::read("/made/c.txt").map_err(|err| format!("read c.txt: {err}"))?;
    if short.len() != 2 {
        return Err(format!("c.txt, a hard link of b.txt, has {} bytes after truncating b.txt to 2", short.len()));
    }
    step("remove c.txt", fs::remove_file("/made/c.txt"))?;
    step("remove dangling", fs::remove_file("/made/dangling"))?;
    step("remove to-b", fs::remove_file("/made/to-b"))?;
    let _ = fs::remove_file("/made/escape");
    step("remove deep", fs::remove_dir("/made/deep"))?;
    let mut listing = Vec::new();
    list("/", &mut listing).map_err(|err| format!("list /: {err}"))?;
    for line in listing {
        transcript.push_str(&line);
        transcript.push('\n');
    }
    Ok(transcript)
}

/// `path` and everything below it, one sorted line per entry.
fn list(path: &str, out: &mut Vec<String>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let child = format!("{}/{}", path.trim_end_matches('/'), entry.file_name().to_string_lossy());
        let meta = std::fs::symlink_metadata(&child)?;
        if meta.is_dir() {
            out.push(format!("{child}/"));
            list(&child, out)?;
        } else if meta.is_symlink() {
            out.push(format!("{child} -> {}", std::fs::read_link(&child)?.display()));
        } else {
            out.push(format!("{child} {} bytes", meta.len()));
        }
    }
    Ok(())
}

/// Writes until the host refuses, then fails as a tool would.
fn disk_bomb() -> ExitCode {
    let chunk = vec![0x5a_u8; 64 * 1024];
    let mut written = 0_u64;
    let result: std::io::Result<()> = std::fs::File::create("/bomb.bin").and_then(|mut file| {
        loop {
            file.write_all(&chunk)?;
            written += chunk.len() as u64;
        }
    });
    eprintln!("disk-bomb: wrote {written} bytes, then {result:?}");
    ExitCode::FAILURE
}

fn file_bomb() -> ExitCode {
    let mut made = 0_u64;
    let result: std::io::Result<()> = std::fs::create_dir("/files").and_then(|()| {
        loop {
            std::fs::write(format!("/files/{made}"), b"x")?;
            made += 1;
        }
    });
    eprintln!("file-bomb: made {made} files, then {result:?}");
    ExitCode::FAILURE
}

fn folder_bomb() -> ExitCode {
    let mut made = 0_u64;
    let result: std::io::Result<()> = loop {
        if let Err(err) = std::fs::create_dir(format!("/d{made}")) {
            break Err(err);
        }
        made += 1;
    };
    eprintln!("folder-bomb: made {made} folders, then {result:?}");
    ExitCode::FAILURE
}

/// Allocates until the allocator fails, which aborts (a trap).
fn memory_bomb() -> ExitCode {
    let mut hoard: Vec<Vec<u8>> = Vec::new();
    loop {
        hoard.push(vec![1_u8; 1 << 20]);
        if hoard.len().is_multiple_of(64) {
            eprintln!("memory-bomb: {} MiB", hoard.len());
        }
    }
}

fn spin() -> ExitCode {
    let mut counter = 0_u64;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

/// Writes `bytes` in 64 KiB pieces; every write must succeed, however much
/// the host drops.
fn flood(stream: &mut dyn std::io::Write, bytes: u64) -> ExitCode {
    let chunk = vec![b'y'; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let piece = usize::try_from(left.min(chunk.len() as u64)).unwrap_or(chunk.len());
        if stream.write_all(&chunk[..piece]).is_err() {
            return ExitCode::from(WRONG);
        }
        left -= piece as u64;
    }
    if stream.flush().is_err() { ExitCode::from(WRONG) } else { ExitCode::SUCCESS }
}

/// What std cannot do on WASI yet, through preview1's calls.
#[cfg(target_env = "p1")]
#[allow(unsafe_code, reason = "the `wasi` crate's preview1 calls are unsafe functions")]
mod raw {
    /// The first preopen's descriptor (preview1 numbers them from 3).
    const FIRST_PREOPEN: wasi::Fd = 3;

    pub fn preopens() -> Vec<String> {
        let mut names = Vec::new();
        for fd in FIRST_PREOPEN.. {
            // SAFETY: plain preview1 calls on descriptor numbers; a number
            // that is not a preopen is an error, which ends the loop.
            let Ok(prestat) = (unsafe { wasi::fd_prestat_get(fd) }) else { break };
            // SAFETY: as above; `prestat.u.dir` is the variant for tag 0 (dir).
            let len = unsafe { prestat.u.dir.pr_name_len };
            let mut name = vec![0_u8; len];
            // SAFETY: `name` has the `len` bytes the call writes.
            if unsafe { wasi::fd_prestat_dir_name(fd, name.as_mut_ptr(), len) }.is_err() {
                break;
            }
            names.push(String::from_utf8_lossy(&name).into_owned());
        }
        names
    }

    /// `link` (an absolute path in the one preopen `/`) pointing to `target`.
    pub fn symlink(target: &str, link: &str) -> Result<(), String> {
        let relative = link.trim_start_matches('/');
        // SAFETY: a plain preview1 call with two string arguments.
        unsafe { wasi::path_symlink(target, FIRST_PREOPEN, relative) }.map_err(|errno| errno.to_string())
    }

    pub fn link_count(path: &str) -> Result<u64, String> {
        let relative = path.trim_start_matches('/');
        // SAFETY: a plain preview1 call with a string argument.
        let stat = unsafe { wasi::path_filestat_get(FIRST_PREOPEN, 0, relative) }.map_err(|errno| errno.to_string())?;
        Ok(stat.nlink)
    }

    pub fn exit_with_code(code: u8) -> ! {
        // SAFETY: a plain preview1 call; it does not return.
        unsafe { wasi::proc_exit(u32::from(code)) }
        unreachable!("proc_exit returned")
    }

    pub fn random_bytes() -> [u8; 16] {
        let mut bytes = [0_u8; 16];
        // SAFETY: `bytes` has the 16 bytes the call writes.
        if unsafe { wasi::random_get(bytes.as_mut_ptr(), bytes.len()) }.is_err() {
            bytes = [0; 16];
        }
        bytes
    }
}

/// What std cannot do on WASI yet, through WASI 0.2's interfaces.
#[cfg(target_env = "p2")]
mod raw {
    use wasip2::filesystem::preopens::get_directories;
    use wasip2::filesystem::types::{Descriptor, PathFlags};

    pub fn preopens() -> Vec<String> {
        get_directories().into_iter().map(|(_, name)| name).collect()
    }

    fn root() -> Result<Descriptor, String> {
        get_directories()
            .into_iter()
            .find(|(_, name)| name == "/")
            .map(|(dir, _)| dir)
            .ok_or_else(|| "no preopen named /".to_owned())
    }

    pub fn symlink(target: &str, link: &str) -> Result<(), String> {
        root()?.symlink_at(target, link.trim_start_matches('/')).map_err(|code| format!("{code:?}"))
    }

    pub fn link_count(path: &str) -> Result<u64, String> {
        let stat =
            root()?.stat_at(PathFlags::empty(), path.trim_start_matches('/')).map_err(|code| format!("{code:?}"))?;
        Ok(stat.link_count)
    }

    pub fn exit_with_code(code: u8) -> ! {
        wasip2::cli::exit::exit_with_code(code);
        unreachable!("exit-with-code returned")
    }

    pub fn random_bytes() -> [u8; 16] {
        let bytes = wasip2::random::random::get_random_bytes(16);
        bytes.try_into().unwrap_or([0; 16])
    }
}
