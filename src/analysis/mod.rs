//! SLO analysis: what one analysis of a rollout reports, and the `Analyzer` the driver calls.
//!
//! The driver knows nothing about Prometheus or statistics: it hands an [`AnalysisContext`] to an
//! [`Analyzer`] and feeds the [`AnalysisReport`] to the machine. A policy without metrics is analysed by
//! [`TimeOnly`], which passes every interval (time-based progression); the daemon uses
//! [`PromAnalyzer`] (Prometheus queries from [`templates`], verdicts from [`judge`]), which also
//! passes on time alone when a policy has neither metrics nor hooks.

pub mod adaptive;
mod analyzer;
pub mod judge;
pub mod prometheus;
pub mod templates;

pub use analyzer::{DEFAULT_MIN_WINDOW, PromAnalyzer};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::BoxFut;
use crate::rollout::{Millis, Rollout, rfc3339};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Every metric within bounds (or, sequential: canary shown not worse): the step may advance.
    Pass,
    /// One failed check.
    Fail,
    /// Not enough data to judge; the policy's `onNoData` decides.
    NoData,
    /// Sequential judge: data, but no conclusion yet. Neither a pass nor a failed check.
    Inconclusive,
    /// A `rollback` hook asked to roll back now.
    Rollback,
    /// Fewer than `minRequests` canary requests this step so far, but more than at the last
    /// analysis: the step extends (it is progressing, so the progress deadline starts over).
    Collecting,
    /// Every metric's query failed (rejected PromQL, ambiguous series): never a pass, whatever
    /// `onNoData` says; the rollout holds and the progress deadline applies.
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum MetricVerdict {
    Pass,
    Fail,
    NoData,
    Inconclusive,
    Error,
}

impl MetricVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            MetricVerdict::Pass => "pass",
            MetricVerdict::Fail => "fail",
            MetricVerdict::NoData => "nodata",
            MetricVerdict::Inconclusive => "inconclusive",
            MetricVerdict::Error => "error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    pub value: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub result: MetricVerdict,
    /// Why: the error, the no-data reason, or the judge's statistics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Object)]
    pub stats: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisReport {
    #[schema(value_type = String)]
    #[serde(with = "rfc3339")]
    pub at: Millis,
    pub verdict: Verdict,
    pub metrics: Vec<MetricResult>,
    /// One line for the rollout's message, e.g. which metric failed and why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
}

/// What an analysis needs to know about the rollout, as of `now`.
#[derive(Debug, Clone)]
pub struct AnalysisContext {
    pub rollout: Rollout,
    pub now: Millis,
}

/// Runs one analysis (queries + judge + `rollout`/`rollback` hooks). Never fails: problems are
/// reported as `NoData`/`Error` metric results so they are visible in the rollout.
pub trait Analyzer: Send + Sync + 'static {
    fn analyse(&self, ctx: AnalysisContext) -> BoxFut<'_, AnalysisReport>;
}

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
