//! The Prometheus series of `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub tenant: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabels {
    pub code: u16,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub jobs: Family<JobLabels, Counter>,
    pub job_duration: Histogram,
    pub running: Gauge,
    pub queued: Family<TenantLabels, Gauge>,
    pub requests: Family<CodeLabels, Counter>,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<JobLabels, Counter>::default();
        // 1 ms to about 65 s.
        let job_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        let running = Gauge::default();
        let queued = Family::<TenantLabels, Gauge>::default();
        let requests = Family::<CodeLabels, Counter>::default();
        // The text encoder adds `_total` to counters.
        registry.register("orders_host_jobs", "Jobs that ended, by tenant and outcome", jobs.clone());
        registry.register(
            "orders_host_job_duration_seconds",
            "Time from a job's start to its end",
            job_duration.clone(),
        );
        registry.register("orders_host_jobs_running", "Jobs running now", running.clone());
        registry.register("orders_host_jobs_queued", "Jobs waiting, by tenant", queued.clone());
        registry.register("orders_host_http_requests", "HTTP requests answered, by status code", requests.clone());
        Self { registry, jobs, job_duration, running, queued, requests }
    }

    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    pub fn job_ended(&self, tenant: &str, outcome: &str, seconds: f64) {
        self.jobs.get_or_create(&JobLabels { tenant: tenant.to_owned(), outcome: outcome.to_owned() }).inc();
        self.job_duration.observe(seconds);
    }

    pub fn set_queued(&self, tenant: &str, queued: usize) {
        self.queued
            .get_or_create(&TenantLabels { tenant: tenant.to_owned() })
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }
}
