//! Scrape-time collection: the [`Source`] trait components implement, the [`Scrape`] writer they write
//! with, the registry that holds them, and the process source (`/proc/self`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::Histogram;

/// The prefix of every metric name.
pub const PREFIX: &str = "raftmq";

/// Label pairs of one series: static names, values computed at scrape time.
pub type Labels = Vec<(&'static str, String)>;

/// Something that writes its metrics when `/metrics` is scraped. Reading values here (not on the request
/// path) is what keeps gauges such as Raft indexes, disk use or consumer lag free for the hot paths.
pub trait Source: Send + Sync + 'static {
    /// Writes every metric of this source.
    fn collect(&self, out: &mut Scrape<'_>) -> fmt::Result;
}

/// The writer a [`Source`] gets: one call per metric family (name, help, then its series).
pub struct Scrape<'a> {
    enc: DescriptorEncoder<'a>,
}

impl Scrape<'_> {
    /// A counter without labels (`name` is exported with `_total`).
    pub fn counter(&mut self, name: &str, help: &str, v: u64) -> fmt::Result {
        self.enc.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, u64>(&v, None)
    }

    /// A counter of a fractional quantity (seconds), without labels.
    pub fn counter_f64(&mut self, name: &str, help: &str, v: f64) -> fmt::Result {
        self.enc.encode_descriptor(name, help, None, MetricType::Counter)?.encode_counter::<NoLabelSet, _, f64>(&v, None)
    }

    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, v: f64) -> fmt::Result {
        self.enc.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&v)
    }

    /// A labelled counter family.
    pub fn counters(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels, u64)>) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Counter)?;
        for (labels, v) in series {
            m.encode_family(&labels)?.encode_counter::<NoLabelSet, _, u64>(&v, None)?;
        }
        Ok(())
    }

    /// A labelled gauge family.
    pub fn gauges(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels, f64)>) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
        for (labels, v) in series {
            m.encode_family(&labels)?.encode_gauge(&v)?;
        }
        Ok(())
    }

    /// A histogram without labels.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> fmt::Result {
        let m = self.enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        encode_histogram(m, h)
    }

    /// A labelled histogram family.
    pub fn histograms<'h>(&mut self, name: &str, help: &str, series: impl IntoIterator<Item = (Labels, &'h Histogram)>) -> fmt::Result {
        let mut m = self.enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
        for (labels, h) in series {
            encode_histogram(m.encode_family(&labels)?, h)?;
        }
        Ok(())
    }
}

fn encode_histogram(mut m: prometheus_client::encoding::MetricEncoder<'_>, h: &Histogram) -> fmt::Result {
    // The count is the sum of the buckets read, so one scrape is consistent even while observations race it.
    let buckets = h.buckets();
    let count = buckets.iter().map(|b| b.1).sum();
    m.encode_histogram::<NoLabelSet>(h.sum(), count, &buckets, None)
}

/// Adapts a [`Source`] to the registry's collector interface.
struct Collected(Arc<dyn Source>);

impl fmt::Debug for Collected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Source")
    }
}

impl prometheus_client::collector::Collector for Collected {
    fn encode(&self, enc: DescriptorEncoder) -> fmt::Result {
        self.0.collect(&mut Scrape { enc })
    }
}

/// The metrics of one process: its sources, exported with the `raftmq_` prefix.
pub struct Metrics {
    registry: Registry,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// A registry of `sources` plus the process source.
    pub fn new(sources: impl IntoIterator<Item = Arc<dyn Source>>) -> Metrics {
        let mut registry = Registry::with_prefix(PREFIX);
        registry.register_collector(Box::new(Collected(Arc::new(ProcessSource))));
        for s in sources {
            registry.register_collector(Box::new(Collected(s)));
        }
        Metrics { registry }
    }

    /// The OpenMetrics text exposition of every source.
    pub fn encode(&self) -> Result<String, fmt::Error> {
        let mut out = String::with_capacity(16 << 10);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Process figures read from `/proc/self` at scrape time (Linux; elsewhere nothing is written).
struct ProcessSource;

/// `(utime + stime ticks, threads)` from `/proc/self/stat`.
fn proc_stat() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: fields after it start at state.
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some((ticks, f.get(17)?.parse().ok()?))
}

/// Resident pages from `/proc/self/statm`.
fn proc_statm_resident() -> Option<u64> {
    std::fs::read_to_string("/proc/self/statm").ok()?.split_whitespace().nth(1)?.parse().ok()
}

fn sysconf(name: libc::c_int) -> Option<u64> {
    // SAFETY: sysconf only reads a configuration value.
    let v = unsafe { libc::sysconf(name) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

impl Source for ProcessSource {
    fn collect(&self, out: &mut Scrape<'_>) -> fmt::Result {
        if let (Some((ticks, threads)), Some(hz)) = (proc_stat(), sysconf(libc::_SC_CLK_TCK)) {
            out.counter_f64("process_cpu_seconds", "CPU time (user + system) the process has used, in seconds.", ticks as f64 / hz as f64)?;
            out.gauge("process_threads", "Threads of the process.", threads as f64)?;
        }
        if let (Some(pages), Some(page)) = (proc_statm_resident(), sysconf(libc::_SC_PAGESIZE)) {
            out.gauge("process_resident_memory_bytes", "Resident set size of the process, in bytes.", (pages * page) as f64)?;
        }
        if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
            out.gauge("process_open_fds", "Open file descriptors of the process.", d.count() as f64)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;

    impl Source for Fixed {
        fn collect(&self, out: &mut Scrape<'_>) -> fmt::Result {
            out.counter("sends", "Sends.", 7)?;
            out.gauges("role", "Role.", [(vec![("role", "leader".to_string())], 1.0), (vec![("role", "follower".to_string())], 0.0)])?;
            let h = Histogram::new(&[10, 100], 1.0);
            h.observe(50);
            out.histograms("lat", "Latency.", [(vec![("op", "send".to_string())], &h)])
        }
    }

    #[test]
    fn sources_are_encoded_with_the_prefix_in_openmetrics_text() {
        let m = Metrics::new([Arc::new(Fixed) as Arc<dyn Source>]);
        let text = m.encode().unwrap();
        for line in [
            "# TYPE raftmq_sends counter",
            "raftmq_sends_total 7",
            "raftmq_role{role=\"leader\"} 1.0",
            "raftmq_role{role=\"follower\"} 0.0",
            "raftmq_lat_bucket{le=\"10.0\",op=\"send\"} 0",
            "raftmq_lat_bucket{le=\"100.0\",op=\"send\"} 1",
            "raftmq_lat_bucket{le=\"+Inf\",op=\"send\"} 1",
            "raftmq_lat_count{op=\"send\"} 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn the_process_source_reads_proc_self() {
        let text = Metrics::new([]).encode().unwrap();
        let value = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
                .unwrap_or_else(|| panic!("{name} in\n{text}"))
        };
        assert!(value("raftmq_process_resident_memory_bytes ") > 1e6);
        assert!(value("raftmq_process_threads ") >= 1.0);
        assert!(value("raftmq_process_open_fds ") >= 3.0);
        assert!(value("raftmq_process_cpu_seconds_total ") >= 0.0);
    }
}
