//! `service.toml`: the server's settings, its extra components and its
//! tenants, each with its token's SHA-256 and its limits. Unknown keys are
//! errors that name the key and its line, so a misspelt limit is never
//! silently the default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use orders_host::{ByteSize, Limits, parse_duration};
use serde::{Deserialize, Deserializer};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The server's settings, with every default filled in.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub result_ttl: Duration,
    /// A client that has not sent its request's headers in this time is cut.
    pub header_read_timeout: Duration,
    /// A client that sends nothing of its body for this long is cut.
    pub body_read_timeout: Duration,
    /// Extra components by name, paths resolved against the config's folder.
    pub components: BTreeMap<String, PathBuf>,
    pub tenants: BTreeMap<String, TenantConfig>,
    /// How `host serve --nats` and `host worker` use JetStream.
    pub nats: NatsSettings,
}

/// `[nats]`: the names, delivery settings and credentials of the JetStream
/// setup (used only with `--nats`). Credentials come from here or from the
/// environment (`NATS_USER` + `NATS_PASSWORD`, `NATS_TOKEN`, `NATS_NKEY`,
/// `NATS_CREDS`), never from the command line.
#[derive(Debug, Clone)]
pub struct NatsSettings {
    /// Of every name: streams `<PREFIX>_QUEUE`, `KV_<PREFIX>_JOBS`,
    /// `OBJ_<PREFIX>_DATA`, subjects `<prefix>.queue.<tenant>`.
    pub prefix: String,
    /// Copies of each stream in a cluster.
    pub replicas: usize,
    /// How long a worker may hold a job without a sign of life before it is
    /// given to another (workers say they are alive every third of it).
    pub ack_wait: Duration,
    /// Runs of a job whose worker vanished before it ends `gave-up`.
    pub max_deliveries: u32,
    pub user: Option<String>,
    pub password: Option<String>,
    pub token: Option<String>,
    /// An nkey seed (`SU...`).
    pub nkey: Option<String>,
    /// A `.creds` file (JWT and nkey seed).
    pub credentials: Option<PathBuf>,
    /// Certificates of the CAs the server's TLS certificate is checked against.
    pub tls_ca: Option<PathBuf>,
    /// Refuse a connection that is not TLS.
    pub tls_required: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NatsFile {
    prefix: Option<String>,
    replicas: Option<Positive>,
    ack_wait: Option<Figure<Seconds>>,
    max_deliveries: Option<Positive>,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    nkey: Option<String>,
    credentials: Option<PathBuf>,
    tls_ca: Option<PathBuf>,
    tls_required: Option<bool>,
}

const DEFAULT_NATS_PREFIX: &str = "orders";
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_DELIVERIES: u32 = 3;

impl NatsFile {
    fn settings(self, base: &Path) -> anyhow::Result<NatsSettings> {
        let prefix = self.prefix.unwrap_or_else(|| DEFAULT_NATS_PREFIX.to_owned());
        if !is_plain_name(&prefix) || prefix.len() > 32 {
            anyhow::bail!("[nats] prefix: `{prefix}` is not 1 to 32 letters, digits, `-` and `_`");
        }
        let ack_wait = self.ack_wait.map_or(DEFAULT_ACK_WAIT, |f| f.0.0);
        if ack_wait < Duration::from_secs(1) {
            anyhow::bail!("[nats] ack_wait: at least 1s, so that a live worker can say so in time");
        }
        let env = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Ok(NatsSettings {
            prefix,
            replicas: self.replicas.map_or(1, |n| n.0),
            ack_wait,
            max_deliveries: self
                .max_deliveries
                .map_or(DEFAULT_MAX_DELIVERIES, |n| u32::try_from(n.0).unwrap_or(u32::MAX)),
            user: self.user.or_else(|| env("NATS_USER")),
            password: self.password.or_else(|| env("NATS_PASSWORD")),
            token: self.token.or_else(|| env("NATS_TOKEN")),
            nkey: self.nkey.or_else(|| env("NATS_NKEY")),
            credentials: self.credentials.map(|path| base.join(path)).or_else(|| env("NATS_CREDS").map(PathBuf::from)),
            tls_ca: self.tls_ca.map(|path| base.join(path)),
            tls_required: self.tls_required.unwrap_or(false),
        })
    }
}

/// One tenant: who it is (its token's hash) and what it may use.
#[derive(Debug, Clone)]
pub struct TenantConfig {
    pub token_sha256: [u8; 32],
    pub max_concurrent: usize,
    pub max_queued: usize,
    pub max_input: u64,
    pub max_stored: u64,
    pub limits: Limits,
}

/// The name `?component=` takes for the pipeline built into the binary.
pub const BUNDLED: &str = "bundled";

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_QUEUED: usize = 1024;
const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MAX_INPUT: u64 = 64 << 20;
const DEFAULT_MAX_STORED: u64 = 1 << 30;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<Figure<SocketAddr>>,
    data_dir: Option<PathBuf>,
    max_concurrent: Option<Positive>,
    max_queued: Option<Positive>,
    result_ttl: Option<Figure<Seconds>>,
    header_read_timeout: Option<Figure<Seconds>>,
    body_read_timeout: Option<Figure<Seconds>>,
    #[serde(default)]
    components: BTreeMap<String, PathBuf>,
    #[serde(default)]
    tenants: BTreeMap<String, TenantFile>,
    #[serde(default)]
    nats: NatsFile,
}

/// Every limit of `host run` may appear, under its flag's name with `_`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantFile {
    token_sha256: Sha256Hex,
    max_concurrent: Option<Positive>,
    max_queued: Option<Positive>,
    max_input: Option<Figure<ByteSize>>,
    max_stored: Option<Figure<ByteSize>>,
    memory: Option<Figure<ByteSize>>,
    timeout: Option<Figure<Seconds>>,
    fuel: Option<u64>,
    disk_quota: Option<Figure<ByteSize>>,
    max_files: Option<u64>,
    max_folders: Option<u64>,
    max_output: Option<Figure<ByteSize>>,
    stderr_limit: Option<Figure<ByteSize>>,
}

/// A value written as a string and read with its `FromStr`, so that a bad
/// one is a deserialization error, which toml places at its line.
struct Figure<T>(T);

impl<'de, T: FromStr> Deserialize<'de> for Figure<T>
where
    T::Err: std::fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map(Figure).map_err(serde::de::Error::custom)
    }
}

/// A duration such as `10s` or `24h` (the forms of `host run --timeout`).
struct Seconds(Duration);

impl FromStr for Seconds {
    type Err = orders_host::ParseFigureError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        parse_duration(text).map(Seconds)
    }
}

/// A count of at least 1.
struct Positive(usize);

impl<'de> Deserialize<'de> for Positive {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match usize::deserialize(deserializer)? {
            0 => Err(serde::de::Error::custom("must be at least 1")),
            n => Ok(Positive(n)),
        }
    }
}

struct Sha256Hex([u8; 32]);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_sha256(&text).map(Sha256Hex).ok_or_else(|| {
            serde::de::Error::custom("is not a SHA-256 in hex (64 hex digits); `host token` prints one with its token")
        })
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(hash)
}

/// The SHA-256 of a token, as the config holds it.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new bearer token (256 bits from the OS RNG, in hex) and its config line.
pub fn new_token() -> anyhow::Result<(String, String)> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|err| anyhow::anyhow!("cannot read the OS random number generator: {err}"))?;
    let token = hex(&bytes);
    let line = format!("token_sha256 = \"{}\"", hex(&token_hash(&token)));
    Ok((token, line))
}

impl Config {
    /// Reads and checks `path`; relative component paths are taken from
    /// the config's folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| anyhow::anyhow!("cannot read the config {}: {err}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).map_err(|err| anyhow::anyhow!("config {}: {err}", path.display()))
    }

    pub fn parse(text: &str, base: &Path) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text).map_err(|err| anyhow::anyhow!("{}", located(text, &err)))?;
        let max_concurrent = file.max_concurrent.map_or_else(default_concurrency, |n| n.0);
        let max_queued = file.max_queued.map_or(DEFAULT_MAX_QUEUED, |n| n.0);
        let mut components = BTreeMap::new();
        for (name, path) in file.components {
            if name == BUNDLED {
                anyhow::bail!("[components]: `{BUNDLED}` is the built-in pipeline's name; choose another name");
            }
            if !is_plain_name(&name) {
                anyhow::bail!("[components]: `{name}` is not a name of letters, digits, `-` and `_`");
            }
            components.insert(name, base.join(path));
        }
        let mut tenants = BTreeMap::new();
        for (name, tenant) in file.tenants {
            if !is_plain_name(&name) {
                anyhow::bail!("[tenants.{name}]: a tenant name is 1 to 64 letters, digits, `-` and `_`");
            }
            if let Some((other, _)) =
                tenants.iter().find(|(_, t): &(_, &TenantConfig)| t.token_sha256 == tenant.token_sha256.0)
            {
                anyhow::bail!(
                    "[tenants.{name}]: its token_sha256 is also tenant {other}'s; give each tenant its own token"
                );
            }
            let defaults = Limits::default();
            let limits = Limits {
                memory: tenant.memory.map_or(defaults.memory, |f| f.0),
                timeout: tenant.timeout.map_or(defaults.timeout, |f| f.0.0),
                fuel: tenant.fuel.or(defaults.fuel),
                disk_quota: tenant.disk_quota.map_or(defaults.disk_quota, |f| f.0),
                max_files: tenant.max_files.unwrap_or(defaults.max_files),
                max_folders: tenant.max_folders.unwrap_or(defaults.max_folders),
                max_output: tenant.max_output.map(|f| f.0).or(defaults.max_output),
                stderr_limit: tenant.stderr_limit.map_or(defaults.stderr_limit, |f| f.0),
                ..defaults
            };
            let config = TenantConfig {
                token_sha256: tenant.token_sha256.0,
                max_concurrent: tenant.max_concurrent.map_or(max_concurrent, |n| n.0),
                max_queued: tenant.max_queued.map_or(max_queued, |n| n.0),
                max_input: tenant.max_input.map_or(DEFAULT_MAX_INPUT, |f| f.0.bytes()),
                max_stored: tenant.max_stored.map_or(DEFAULT_MAX_STORED, |f| f.0.bytes()),
                limits,
            };
            tenants.insert(name, config);
        }
        let header_read_timeout = file.header_read_timeout.map_or(super::HEADER_READ_TIMEOUT, |f| f.0.0);
        let body_read_timeout = file.body_read_timeout.map_or(super::api::BODY_READ_TIMEOUT, |f| f.0.0);
        for (key, timeout) in [("header_read_timeout", header_read_timeout), ("body_read_timeout", body_read_timeout)] {
            if timeout.is_zero() {
                anyhow::bail!("{key} is 0: every client would be cut; give it a duration such as \"10s\"");
            }
        }
        if tenants.is_empty() {
            anyhow::bail!("no [tenants.NAME] table: add one with the line `host token` prints");
        }
        Ok(Self {
            listen: match file.listen {
                Some(listen) => listen.0,
                None => DEFAULT_LISTEN.parse()?,
            },
            data_dir: file.data_dir.unwrap_or_else(default_data_dir),
            max_concurrent,
            max_queued,
            result_ttl: file.result_ttl.map_or(DEFAULT_RESULT_TTL, |f| f.0.0),
            header_read_timeout,
            body_read_timeout,
            components,
            tenants,
            nats: file.nats.settings(base)?,
        })
    }

    /// The tenant whose token this is: every tenant's hash is compared, in
    /// constant time, so the answer's timing says nothing about the tokens.
    pub fn authenticate(&self, token: &str) -> Option<String> {
        let hash = token_hash(token);
        let mut found = None;
        for (name, tenant) in &self.tenants {
            if bool::from(tenant.token_sha256.ct_eq(&hash)) {
                found = Some(name.clone());
            }
        }
        found
    }

    /// Whether some tenant has a fuel budget: the engine then meters fuel.
    pub fn needs_fuel(&self) -> bool {
        self.tenants.values().any(|t| t.limits.fuel.is_some())
    }
}

/// toml's message with its line and column, or, for errors without a span,
/// the message alone.
fn located(text: &str, err: &toml::de::Error) -> String {
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {}", err.message())
        }
        None => err.message().to_owned(),
    }
}

fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn default_concurrency() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// `$XDG_DATA_HOME/orders-host`, else `~/.local/share/orders-host`.
fn default_data_dir() -> PathBuf {
    let home_data = || std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share"));
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(home_data)
        .unwrap_or_else(std::env::temp_dir)
        .join("orders-host")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, Path::new("/etc/orders"))
    }

    #[test]
    fn the_example_of_the_issue_reads_with_every_key() {
        let text = format!(
            r#"
listen = "127.0.0.1:8080"
data_dir = "/var/lib/orders-host"
max_concurrent = 8
max_queued = 1024
result_ttl = "24h"
header_read_timeout = "5s"
body_read_timeout = "1m"

[components]
hostile = "plugins/hostile.wasm"

[tenants.acme]
token_sha256 = "{HASH}"
max_concurrent = 2
max_queued = 32
max_input = "64MiB"
max_stored = "1GiB"
timeout = "10s"
memory = "128MiB"
disk_quota = "256MiB"
fuel = 1000000
max_files = 50
max_folders = 5
max_output = "10MiB"
stderr_limit = "1KiB"
"#
        );
        let config = parse(&text).expect("the issue's example is valid");
        assert_eq!(config.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(config.data_dir, Path::new("/var/lib/orders-host"));
        assert_eq!((config.max_concurrent, config.max_queued), (8, 1024));
        assert_eq!(config.result_ttl, Duration::from_secs(86_400));
        assert_eq!(
            (config.header_read_timeout, config.body_read_timeout),
            (Duration::from_secs(5), Duration::from_secs(60))
        );
        assert_eq!(config.components["hostile"], Path::new("/etc/orders/plugins/hostile.wasm"));
        let acme = &config.tenants["acme"];
        assert_eq!(hex(&acme.token_sha256), HASH);
        assert_eq!((acme.max_concurrent, acme.max_queued), (2, 32));
        assert_eq!((acme.max_input, acme.max_stored), (64 << 20, 1 << 30));
        let limits = acme.limits;
        assert_eq!(
            (limits.timeout, limits.memory, limits.disk_quota),
            (Duration::from_secs(10), ByteSize(128 << 20), ByteSize(256 << 20))
        );
        assert_eq!((limits.fuel, limits.max_files, limits.max_folders), (Some(1_000_000), 50, 5));
        assert_eq!((limits.max_output, limits.stderr_limit), (Some(ByteSize(10 << 20)), ByteSize(1 << 10)));
        assert!(config.needs_fuel());
    }

    #[test]
    fn a_tenant_without_limits_gets_the_defaults_of_host_run_and_the_servers_bounds() {
        let config = parse(&format!("max_concurrent = 3\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n")).expect("valid");
        let tenant = &config.tenants["a"];
        assert_eq!(tenant.limits, Limits::default());
        assert_eq!((tenant.max_concurrent, tenant.max_queued), (3, DEFAULT_MAX_QUEUED));
        assert_eq!(config.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(
            (config.header_read_timeout, config.body_read_timeout),
            (Duration::from_secs(10), Duration::from_secs(30))
        );
        assert!(!config.needs_fuel());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = parse(&format!("max_queued = 4\n\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\ntimout = \"5s\"\n"))
            .expect_err("a misspelt key");
        let text = err.to_string();
        assert!(text.contains("line 5") && text.contains("timout"), "{text}");
        let err = parse("lissten = \"x\"\n").expect_err("a misspelt top-level key");
        assert!(err.to_string().contains("line 1") && err.to_string().contains("lissten"), "{err}");
    }

    #[test]
    fn a_bad_figure_is_named_with_its_line_and_the_forms_accepted() {
        let err = parse(&format!("[tenants.a]\ntoken_sha256 = \"{HASH}\"\nmemory = \"lots\"\n")).expect_err("bad size");
        let text = err.to_string();
        assert!(text.contains("line 3") && text.contains("256MiB"), "{text}");
        let err =
            parse(&format!("result_ttl = \"soon\"\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n")).expect_err("bad ttl");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse(&format!("body_read_timeout = \"slowly\"\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n"))
            .expect_err("a timeout that is no duration");
        assert!(err.to_string().contains("line 1"), "{err}");
        let err = parse(&format!("header_read_timeout = \"0s\"\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n"))
            .expect_err("a timeout that would cut every client");
        assert!(err.to_string().contains("header_read_timeout"), "{err}");
        let err = parse("[tenants.a]\ntoken_sha256 = \"abc\"\n").expect_err("bad hash");
        assert!(err.to_string().contains("line 2") && err.to_string().contains("host token"), "{err}");
        let err = parse(&format!("max_concurrent = 0\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n")).expect_err("zero");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn tenants_need_their_own_tokens_and_plain_names() {
        let shared = format!("[tenants.a]\ntoken_sha256 = \"{HASH}\"\n[tenants.b]\ntoken_sha256 = \"{HASH}\"\n");
        assert!(parse(&shared).expect_err("shared token").to_string().contains("own token"));
        let bad = format!("[tenants.\"a b\"]\ntoken_sha256 = \"{HASH}\"\n");
        assert!(parse(&bad).is_err());
        assert!(parse("max_queued = 3\n").expect_err("no tenant").to_string().contains("host token"));
        let bundled = format!("[components]\nbundled = \"x.wasm\"\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n");
        assert!(parse(&bundled).expect_err("reserved").to_string().contains("built-in"));
    }

    #[test]
    fn the_nats_table_has_defaults_and_its_own_checks() {
        let plain = parse(&format!("[tenants.a]\ntoken_sha256 = \"{HASH}\"\n")).expect("valid");
        assert_eq!(plain.nats.prefix, "orders");
        assert_eq!((plain.nats.ack_wait, plain.nats.max_deliveries, plain.nats.replicas), (DEFAULT_ACK_WAIT, 3, 1));
        let set = parse(&format!(
            "[nats]\nprefix = \"jobs-eu\"\nack_wait = \"5s\"\nmax_deliveries = 5\nreplicas = 3\ncredentials = \"svc.creds\"\n\
             [tenants.a]\ntoken_sha256 = \"{HASH}\"\n"
        ))
        .expect("valid");
        assert_eq!((set.nats.prefix.as_str(), set.nats.max_deliveries, set.nats.replicas), ("jobs-eu", 5, 3));
        assert_eq!(set.nats.ack_wait, Duration::from_secs(5));
        assert_eq!(set.nats.credentials.as_deref(), Some(Path::new("/etc/orders/svc.creds")));
        let err = parse(&format!("[nats]\nack_wiat = \"5s\"\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n"))
            .expect_err("a misspelt key");
        assert!(err.to_string().contains("line 2") && err.to_string().contains("ack_wiat"), "{err}");
        let err = parse(&format!("[nats]\nprefix = \"a.b\"\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n"))
            .expect_err("a prefix that is no subject token");
        assert!(err.to_string().contains("prefix"), "{err}");
        let err = parse(&format!("[nats]\nack_wait = \"10ms\"\n[tenants.a]\ntoken_sha256 = \"{HASH}\"\n"))
            .expect_err("too short to keep a job");
        assert!(err.to_string().contains("ack_wait"), "{err}");
    }

    #[test]
    fn a_new_token_matches_its_config_line() {
        let (token, line) = new_token().expect("OS RNG");
        let (other, _) = new_token().expect("OS RNG");
        assert_ne!(token, other);
        assert_eq!(token.len(), 64);
        let config = parse(&format!("[tenants.a]\n{line}\n")).expect("the printed line is valid config");
        assert_eq!(config.tenants["a"].token_sha256, token_hash(&token));
    }
}
