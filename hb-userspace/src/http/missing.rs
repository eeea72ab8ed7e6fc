//! A missing host as `/missing` and the status page show it: one row,
//! shared by the JSON and the HTML.

use crate::track::silent::OwnedLabels;

#[derive(serde::Serialize)]
pub struct MissingHost {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<OwnedLabels>,
    /// When hb started expecting it (its grace began).
    pub expected_since: String,
    pub missing_for_ms: u64,
}
