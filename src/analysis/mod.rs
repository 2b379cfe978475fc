//! SLO analysis: the implementations of the core's [`Analyzer`] port (`rollout::ports`, which also
//! defines what one analysis reports).
//!
//! The driver knows nothing about Prometheus or statistics: it hands an [`AnalysisContext`] to an
//! [`Analyzer`] and feeds the [`AnalysisReport`] to the machine. A policy without metrics is analysed by
//! [`TimeOnly`], which passes every interval (time-based progression); the daemon uses
//! [`PromAnalyzer`] (Prometheus queries from [`templates`], verdicts from [`judge`]), which also
//! passes on time alone when a policy has neither metrics nor hooks.

pub mod adaptive;
mod analyzer;
pub mod judge;
pub mod power;
pub mod prometheus;
pub mod templates;

pub use crate::config::DEFAULT_MIN_WINDOW;
pub use analyzer::PromAnalyzer;

use crate::BoxFut;
pub use crate::rollout::ports::{AnalysisContext, AnalysisReport, Analyzer, MetricResult, MetricVerdict, Verdict};

/// For policies without metrics: every analysis passes, so steps advance on time alone.
pub struct TimeOnly;

impl Analyzer for TimeOnly {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport> {
        Box::pin(async move {
            AnalysisReport {
                at: ctx.now,
                verdict: Verdict::Pass,
                metrics: vec![],
                summary: "no metrics: time-based".into(),
            }
        })
    }
}
