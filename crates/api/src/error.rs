//! The body of every error answer.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": CODE, "message": TEXT}`: a stable code a program branches on
/// (`invalid-credentials`, `locked`, `connection-stale`, ...) and a
/// sentence for people. A 500 carries no internal detail. Clients accept
/// fields they do not know, so a newer device may add some.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// The error code.
    pub error: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}
