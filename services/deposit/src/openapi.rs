//! The deposit service's OpenAPI header (info, tags, the `x-api-key` security scheme) and the
//! schemas of bodies that the handlers build as JSON. The paths come from the
//! `#[utoipa::path]` annotations in [`crate::api`], registered with its routes.

use chrono::{DateTime, Utc};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use uuid::Uuid;

/// The tags of the spec.
pub const ACCOUNTS_TAG: &str = "accounts";
pub const DEPOSITS_TAG: &str = "deposits";
/// The security scheme the write endpoints require (named as a literal in their
/// `security(("api_key" = []))`, which takes no constant).
pub const API_KEY_SCHEME: &str = "api_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventbank deposit",
        description = "Accepts deposits: validated, stored with a per-account sequence number and \
                       an outbox row in one transaction, then published as DepositCompleted. \
                       Write endpoints require the API key in `x-api-key`. Errors are RFC 9457 \
                       problems."
    ),
    tags(
        (name = ACCOUNTS_TAG, description = "The account directory"),
        (name = DEPOSITS_TAG, description = "Deposits, idempotent with Idempotency-Key"),
    ),
    modifiers(&ApiKeyScheme)
)]
pub struct ApiDoc;

/// `x-api-key`, compared in constant time; the demo key `eventbank-demo-key` when the service
/// runs without `API_KEY`.
struct ApiKeyScheme;

impl Modify for ApiKeyScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "x-api-key",
                "The service's API_KEY (eventbank-demo-key when it runs without one)",
            ))),
        );
    }
}

/// What `POST /deposits` answers (and replays for a repeated Idempotency-Key). The handler
/// builds it as JSON; the API tests check real answers against this schema.
#[derive(ToSchema)]
#[allow(dead_code)] // documentation only
pub struct DepositAccepted {
    #[schema(example = "ACC-0001")]
    account_id: String,
    /// The amount as a decimal string in the currency's precision.
    #[schema(example = "250.00")]
    amount: String,
    /// The amount in integer minor units.
    #[schema(example = 25000)]
    amount_minor: i64,
    created_at: DateTime<Utc>,
    #[schema(example = "USD")]
    currency: String,
    deposit_id: Uuid,
    /// The id of the `DepositCompleted` event.
    event_id: Uuid,
    /// Per-account sequence number: pass it as `min_sequence` to the account service for
    /// read-your-writes.
    #[schema(example = 1)]
    sequence: i64,
}
