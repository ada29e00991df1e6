//! The JSON shape of `/api/v1/audit` entries.

use serde::Serialize;
use streamgate_actors::model::AuditEntry;

#[derive(Serialize)]
pub struct AuditEntryDto {
    pub id: String,
    pub at: String,
    pub action: String,
    pub actor: String,
    pub target: Option<String>,
    pub outcome: String,
    pub detail: Option<String>,
}

impl From<&AuditEntry> for AuditEntryDto {
    fn from(entry: &AuditEntry) -> Self {
        Self {
            id: entry.id.to_string(),
            at: super::rfc3339(entry.at),
            action: entry.action.clone(),
            actor: entry.actor.clone(),
            target: entry.target.clone(),
            outcome: entry.outcome.clone(),
            detail: entry.detail.clone(),
        }
    }
}
