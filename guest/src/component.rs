//! The WASI component: exports the `orders:pipeline` world by calling
//! [`process_paths`](crate::process_paths) on the paths the host passes.

/// The bindings generated from `wit/pipeline.wit`. Their glue code is
/// `unsafe` (it moves values across the component ABI); this module is the
/// only place in the crate allowed to contain it.
#[allow(unsafe_code)]
mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "pipeline",
    });

    use super::Component;
    export!(Component);
}

use std::path::Path;

use bindings::orders::pipeline::types as wit;

struct Component;

impl bindings::Guest for Component {
    fn process(input: String, output_dir: String) -> Result<wit::Report, wit::PipelineError> {
        crate::process_paths(Path::new(&input), Path::new(&output_dir)).map(into_wit_report).map_err(into_wit_error)
    }
}

fn into_wit_report(report: crate::Report) -> wit::Report {
    wit::Report {
        rows: report.rows,
        accepted: report.accepted,
        cancelled: report.cancelled,
        rejected: report.rejected,
        reasons: report
            .reasons
            .into_iter()
            .map(|(reason, rows)| wit::ReasonCount { reason: reason.as_str().to_owned(), rows })
            .collect(),
        regions: report
            .regions
            .into_iter()
            .map(|total| wit::RegionTotal {
                region: total.region,
                orders: total.orders,
                total_cents: total.total_cents,
            })
            .collect(),
        outputs: report.outputs,
    }
}

fn into_wit_error(error: crate::PipelineError) -> wit::PipelineError {
    match error {
        crate::PipelineError::InvalidInput(message) => wit::PipelineError::InvalidInput(message),
        crate::PipelineError::Io(message) => wit::PipelineError::Io(message),
        crate::PipelineError::Overflow(message) => wit::PipelineError::Overflow(message),
    }
}
