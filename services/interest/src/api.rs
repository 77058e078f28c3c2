//! HTTP API of the interest service. Every error is an [`ApiError`], answered as an RFC 9457
//! problem, query-string errors included (the query is taken as a map with the runtime's
//! `ApiQuery`, whose rejection is a problem, and each parameter parsed here).
//!
//! - `GET /interest/accounts/{id}?from=YYYY-MM-DD&to=YYYY-MM-DD`: the daily closing balances,
//!   rates and accrued interest of each day, and the totals.
//! - `GET /interest/accounts/{id}/balance`: the current balance (the latest closing balance).

use crate::accrual::{self, ExactInterest};
use crate::error::ApiError;
use crate::store::{self, AccountSummary};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Json, Router};
use chrono::{NaiveDate, Utc};
use eventbank_events::{AccountId, Currency, Money};
use eventbank_runtime::http::{ApiQuery, Problem};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const PROBLEM: &str = eventbank_runtime::http::PROBLEM_CONTENT_TYPE;

/// The longest range of days one request may cover; longer ranges are answered with a 400 so
/// that one request cannot make the service compute (and serialise) decades of days.
pub const MAX_DAYS_PER_REQUEST: i64 = 3_660;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
}

const TAG: &str = "interest";

/// The spec's header; the paths come from the routes registered in [`router`].
#[derive(OpenApi)]
#[openapi(
    info(
        title = "eventbank interest",
        description = "Daily closing balances copied from DepositCompleted events and the interest \
                       accrued on them (Actual/365, half-even). Errors are RFC 9457 problems."
    ),
    tags((name = TAG, description = "Daily balances and accrued interest per account"))
)]
pub struct ApiDoc;

/// The service's own routes with their OpenAPI paths, state applied. `run` adds the ops routes,
/// the docs and the fallback ([`eventbank_runtime::http::service_router`]).
pub fn router(state: AppState) -> OpenApiRouter {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(get_accrual))
        .routes(routes!(get_balance))
        .with_state(state)
}

/// [`router`] without the spec.
pub fn app(state: AppState) -> Router {
    router(state).split_for_parts().0
}

fn parse_day(
    params: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<NaiveDate>, ApiError> {
    params
        .get(name)
        .map(|raw| {
            NaiveDate::parse_from_str(raw, "%Y-%m-%d").map_err(|_| ApiError::InvalidParameter {
                parameter: name,
                detail: format!("{name} must be a date such as 2024-02-29"),
            })
        })
        .transpose()
}

fn parse_account(path: Result<Path<String>, PathRejection>) -> Result<AccountId, ApiError> {
    let Path(raw) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    AccountId::parse(&raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn summary(state: &AppState, account_id: &AccountId) -> Result<AccountSummary, ApiError> {
    let mut conn = state.pool.acquire().await?;
    store::account_summary(&mut conn, account_id)
        .await?
        .ok_or_else(|| ApiError::UnknownAccount(account_id.clone()))
}

/// Minor units as a decimal string in the currency's precision, when it can be formatted.
fn decimal(minor: i128, currency: &str) -> Option<String> {
    let currency = Currency::parse(currency).ok()?;
    let minor = i64::try_from(minor).ok()?;
    Some(Money { minor, currency }.to_decimal_string())
}

/// The current balance as the interest service knows it.
#[derive(Serialize, ToSchema)]
struct BalanceBody {
    #[schema(value_type = String, example = "ACC-0001")]
    account_id: AccountId,
    #[schema(example = "USD")]
    currency: String,
    #[schema(example = 26000)]
    balance_minor: i64,
    /// Decimal string in the currency's precision (absent if the currency is unknown here).
    #[schema(example = "260.00")]
    balance: Option<String>,
    /// The business day of the latest closing balance; the balance holds from then on.
    as_of_day: NaiveDate,
}

/// The current balance: the latest daily closing balance.
#[utoipa::path(
    get,
    path = "/interest/accounts/{account_id}/balance",
    tag = TAG,
    params(("account_id" = String, Path, description = "The account", example = "ACC-0001")),
    responses(
        (status = 200, description = "The latest closing balance", body = BalanceBody),
        (status = 400, description = "Not an account id", body = Problem,
            content_type = PROBLEM),
        (status = 404, description = "No deposit of this account has reached the service", body = Problem,
            content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem,
            content_type = PROBLEM),
    ),
)]
async fn get_balance(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<BalanceBody>, ApiError> {
    let account_id = parse_account(path)?;
    let s = summary(&state, &account_id).await?;
    Ok(Json(BalanceBody {
        balance: decimal(i128::from(s.balance_minor), &s.currency),
        account_id: s.account_id,
        currency: s.currency,
        balance_minor: s.balance_minor,
        as_of_day: s.as_of_day,
    }))
}

/// One business day.
#[derive(Serialize, ToSchema)]
struct DayBody {
    day: NaiveDate,
    closing_balance_minor: i64,
    /// Annual rate in percent, exact decimal string ("2.50").
    #[schema(example = "2.50")]
    rate: String,
    /// The day's interest in millionths of a minor unit, rounded half-even.
    accrued_micro: i64,
}

/// Daily balances, rates and accrued interest over a range of days, and the totals.
#[derive(Serialize, ToSchema)]
struct AccrualBody {
    #[schema(value_type = String, example = "ACC-0001")]
    account_id: AccountId,
    #[schema(example = "USD")]
    currency: String,
    /// The range actually reported: the request's, clipped to the account's first business day
    /// and to today (UTC); absent when nothing of the range is reported.
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    /// The last day whose accrual is stored; later days are projected from the latest closing
    /// balance and current rates with the same engine, and stored by the accrual job later.
    accrued_through: Option<NaiveDate>,
    #[schema(example = "Actual/365")]
    day_count: &'static str,
    #[schema(example = "half-even")]
    rounding: &'static str,
    days: Vec<DayBody>,
    /// Exact sum of the days, rounded half-even once (not the sum of the rounded days).
    total_accrued_micro: i64,
    /// The amount that posting would credit: the exact sum rounded half-even to minor units.
    total_accrued_minor: i64,
    total_accrued: Option<String>,
}

/// The daily closing balances, rates and accrued interest of each day in a range, and the
/// totals. Days after the stored accruals are projected with the same engine.
#[utoipa::path(
    get,
    path = "/interest/accounts/{account_id}",
    tag = TAG,
    params(
        ("account_id" = String, Path, description = "The account", example = "ACC-0001"),
        ("from" = Option<NaiveDate>, Query,
            description = "First day (default: the account's first business day)", example = "2026-11-01"),
        ("to" = Option<NaiveDate>, Query, description = "Last day (default and at most: today, UTC)",
            example = "2026-11-30"),
    ),
    responses(
        (status = 200, description = "The days of the range and the totals", body = AccrualBody),
        (status = 400, description = "A malformed account id or date, from after to, or a range over 3660 days",
            body = Problem, content_type = PROBLEM),
        (status = 404, description = "No deposit of this account has reached the service", body = Problem,
            content_type = PROBLEM),
        (status = 500, description = "The query could not be answered", body = Problem,
            content_type = PROBLEM),
    ),
)]
async fn get_accrual(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    ApiQuery(params): ApiQuery<HashMap<String, String>>,
) -> Result<Json<AccrualBody>, ApiError> {
    let account_id = parse_account(path)?;
    let requested_from = parse_day(&params, "from")?;
    let requested_to = parse_day(&params, "to")?;
    if let (Some(from), Some(to)) = (requested_from, requested_to)
        && from > to
    {
        return Err(ApiError::FromAfterTo { from, to });
    }
    let s = summary(&state, &account_id).await?;
    let today = Utc::now().date_naive();
    let from = requested_from.map_or(s.first_day, |f| f.max(s.first_day));
    let to = requested_to.map_or(today, |t| t.min(today));
    let mut body = AccrualBody {
        account_id: s.account_id.clone(),
        currency: s.currency.clone(),
        from: None,
        to: None,
        accrued_through: s.accrued_through,
        day_count: "Actual/365",
        rounding: "half-even",
        days: Vec::new(),
        total_accrued_micro: 0,
        total_accrued_minor: 0,
        total_accrued: decimal(0, &s.currency),
    };
    if from > to {
        return Ok(Json(body));
    }
    let span = (to - from).num_days() + 1;
    if span > MAX_DAYS_PER_REQUEST {
        return Err(ApiError::RangeTooLong { days: span });
    }

    let mut conn = state.pool.acquire().await?;
    let stored = store::accruals_between(&mut conn, &s.account_id, from, to).await?;
    let mut total = ExactInterest::ZERO;
    for row in &stored {
        total = total + ExactInterest::for_day(row.balance_minor, row.rate);
        body.days.push(DayBody {
            day: row.day,
            closing_balance_minor: row.balance_minor,
            rate: row.rate.to_string(),
            accrued_micro: row.accrued_micro,
        });
    }
    // Days after the stored horizon: the balance has not changed since the last deposit.
    let projected_from = s
        .accrued_through
        .and_then(|h| h.succ_opt())
        .map_or(from, |next| next.max(from));
    if projected_from <= to {
        let balances = store::all_balances(&mut conn, &s.account_id).await?;
        let schedules = store::rate_schedules(&mut conn, std::slice::from_ref(&s.currency)).await?;
        let schedule = schedules.get(&s.currency).cloned().unwrap_or_default();
        for day in accrual::accrue_days(&balances, &schedule, projected_from, to) {
            total = total + day.interest;
            body.days.push(DayBody {
                day: day.day,
                closing_balance_minor: day.balance_minor,
                rate: day.rate.to_string(),
                accrued_micro: i64::try_from(day.interest.micro())?,
            });
        }
    }
    body.from = Some(from);
    body.to = Some(to);
    body.total_accrued_micro = i64::try_from(total.micro())?;
    body.total_accrued_minor = i64::try_from(total.minor())?;
    body.total_accrued = decimal(i128::from(body.total_accrued_minor), &s.currency);
    Ok(Json(body))
}
