//! The OpenAPI conformance checks: a service's spec against its real router, and the JSON it
//! answers against the schemas the spec documents.

use serde_json::Value;

use super::serve::send;

/// What a route answered in [`check_spec_against_router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAnswer {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// Checks a service's OpenAPI spec against its real router, both ways:
///
/// - the spec's (method, path) set is exactly `expected` (written out in the test, so a route
///   added, removed or renamed without the test changing fails);
/// - every documented operation answers on `router` with something other than 405 or the
///   fallback's "no such route" 404 (path parameters from `path_params`, else `placeholder`;
///   write methods get an empty JSON object);
/// - each answer's status is documented for its operation, and a JSON answer matches the
///   documented schema ([`check_response`]);
/// - every path parameter of a template is documented, and every 4xx/5xx response is documented
///   as `application/problem+json` (except `/readyz`'s 503, which is the readiness body);
/// - `/openapi.json` serves this very spec and `/docs` serves Swagger UI from the binary.
///
/// `router` is what [`crate::http::service_router`] built, the one the service serves. Routes
/// registered with `utoipa_axum::routes!` are in the spec by construction, so together this
/// fails when the spec and the routes disagree in either direction. Returns what each
/// documented route answered.
pub async fn check_spec_against_router(
    router: axum::Router,
    spec: &utoipa::openapi::OpenApi,
    expected: &[(&str, &str)],
    path_params: &[(&str, &str)],
) -> anyhow::Result<Vec<RouteAnswer>> {
    use std::collections::BTreeSet;
    let mut problems = Vec::new();

    let documented = documented_operations(spec);
    let documented_set: BTreeSet<(String, String)> = documented
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let expected_set: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_ascii_uppercase(), (*p).to_owned()))
        .collect();
    for missing in expected_set.difference(&documented_set) {
        problems.push(format!(
            "expected but not in the spec: {} {}",
            missing.0, missing.1
        ));
    }
    for extra in documented_set.difference(&expected_set) {
        problems.push(format!(
            "in the spec but not expected: {} {}",
            extra.0, extra.1
        ));
    }

    let mut answers = Vec::new();
    for (method, path, operation) in &documented {
        problems.extend(operation_problems(path, operation));
        let uri = fill_path(path, path_params);
        let (status, body) = send(&router, method, &uri, &[], None).await?;
        answers.push(RouteAnswer {
            method: method.clone(),
            path: path.clone(),
            status,
        });
        if status == 405 || (status == 404 && is_no_such_route(&body)) {
            problems.push(format!(
                "documented but not routed: {method} {path} ({uri} answered {status})"
            ));
            continue;
        }
        if !operation
            .responses
            .responses
            .contains_key(&status.to_string())
        {
            problems.push(format!(
                "{method} {path}: {uri} answered {status}, which the spec does not document"
            ));
            continue;
        }
        if let Ok(json) = serde_json::from_slice::<Value>(&body)
            && let Err(e) = check_response(spec, method, path, status, &json)
        {
            problems.push(format!("{e:#}"));
        }
    }

    // The detector itself: an undocumented path must reach the fallback.
    let (status, body) = send(&router, "GET", "/no-such-route-in-any-spec", &[], None).await?;
    if !(status == 404 && is_no_such_route(&body)) {
        problems.push(format!(
            "an unknown route answered {status}, not the fallback's 404; the check cannot tell"
        ));
    }

    let (status, body) = send(&router, "GET", crate::http::OPENAPI_PATH, &[], None).await?;
    let served: Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != 200 || served != serde_json::to_value(spec)? {
        problems.push(format!(
            "{} answered {status} and not this spec",
            crate::http::OPENAPI_PATH
        ));
    }
    let docs = crate::http::DOCS_PATH;
    for (asset, needle) in [
        ("/", "swagger-ui"),
        ("/swagger-ui.css", ".swagger-ui"),
        ("/swagger-ui-bundle.js", "SwaggerUIBundle"),
        ("/swagger-initializer.js", crate::http::OPENAPI_PATH),
        ("/swagger-initializer.js", r#""validatorUrl": "none""#),
    ] {
        let (status, body) = send(&router, "GET", &format!("{docs}{asset}"), &[], None).await?;
        if status != 200 || !String::from_utf8_lossy(&body).contains(needle) {
            problems.push(format!(
                "{docs}{asset} answered {status} without {needle:?}"
            ));
        }
    }

    if problems.is_empty() {
        Ok(answers)
    } else {
        anyhow::bail!(
            "the OpenAPI spec and the router disagree:\n  {}",
            problems.join("\n  ")
        )
    }
}

/// Checks a JSON body the service really answered against the schema the spec documents for
/// `method path` and `status` (content `application/json`, or `application/problem+json` for
/// a problem), with the `jsonschema` crate: every required member is there, every member is
/// documented (unless the schema allows additional ones), and every value has its documented
/// type. So a response struct and the JSON a handler builds cannot drift apart unnoticed.
pub fn check_response(
    spec: &utoipa::openapi::OpenApi,
    method: &str,
    path: &str,
    status: u16,
    body: &Value,
) -> anyhow::Result<()> {
    let spec = serde_json::to_value(spec)?;
    let response =
        &spec["paths"][path][method.to_ascii_lowercase()]["responses"][status.to_string()];
    let content = &response["content"];
    let schema = ["application/json", crate::http::PROBLEM_CONTENT_TYPE]
        .iter()
        .map(|c| &content[*c]["schema"])
        .find(|s| !s.is_null())
        .ok_or_else(|| anyhow::anyhow!("{method} {path} documents no JSON {status} response"))?;
    let validator = response_validator(&spec, schema)
        .map_err(|e| anyhow::anyhow!("{method} {path} {status}: unusable schema: {e}"))?;
    let problems: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("${}: {e}", e.instance_path()))
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{method} {path} {status} does not match its documented schema:\n  {}\nbody: {body}",
            problems.join("\n  ")
        )
    }
}

/// A validator for `schema`, taken from the OpenAPI 3.1 document `spec` (so JSON Schema
/// 2020-12). Its `#/components/schemas/...` references point into the spec, so the root
/// document carries the spec's components; they are then inlined so that [`close_objects`]
/// sees every object schema in place.
fn response_validator(spec: &Value, schema: &Value) -> anyhow::Result<jsonschema::Validator> {
    let mut root = schema.clone();
    if let (Value::Object(members), Some(components)) = (&mut root, spec.get("components")) {
        members.insert("components".to_owned(), components.clone());
    }
    let options = jsonschema::options().with_draft(jsonschema::Draft::Draft202012);
    let mut root = options.dereference(&root)?;
    close_objects(&mut root, true);
    Ok(options.build(&root)?)
}

/// JSON Schema lets an object carry members its schema does not name; here the spec is the
/// contract, so an object schema that names its members and does not say what to do with
/// others is closed (`unevaluatedProperties: false`). Unlike `additionalProperties`, that
/// keyword also counts the members named by `allOf` parts (what `#[serde(flatten)]` becomes),
/// so the parts stay open (`closable` false) and the schema holding them is closed.
fn close_objects(schema: &mut Value, closable: bool) {
    let Value::Object(keywords) = schema else {
        return;
    };
    for (keyword, value) in keywords.iter_mut() {
        match keyword.as_str() {
            "properties" | "patternProperties" | "$defs" => {
                for sub in value
                    .as_object_mut()
                    .into_iter()
                    .flat_map(|m| m.values_mut())
                {
                    close_objects(sub, true);
                }
            }
            "items"
            | "additionalProperties"
            | "not"
            | "contains"
            | "propertyNames"
            | "if"
            | "then"
            | "else" => close_objects(value, true),
            "prefixItems" | "allOf" | "oneOf" | "anyOf" => {
                // A branch of a part is a part too: the members it names count for the whole.
                let closable = match keyword.as_str() {
                    "allOf" => false,
                    "prefixItems" => true,
                    _ => closable,
                };
                for sub in value.as_array_mut().into_iter().flatten() {
                    close_objects(sub, closable);
                }
            }
            _ => {}
        }
    }
    if closable
        && names_members(schema)
        && !decides_other_members(schema)
        && let Value::Object(keywords) = schema
    {
        keywords.insert("unevaluatedProperties".to_owned(), Value::Bool(false));
    }
}

fn all_of(schema: &Value) -> impl Iterator<Item = &Value> {
    schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Whether the schema, its `allOf` parts included, names any member.
fn names_members(schema: &Value) -> bool {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .is_some_and(|p| !p.is_empty())
        || all_of(schema).any(names_members)
}

/// Whether the schema or one of its `allOf` parts says itself what other members may be.
fn decides_other_members(schema: &Value) -> bool {
    schema.get("additionalProperties").is_some()
        || schema.get("unevaluatedProperties").is_some()
        || all_of(schema).any(decides_other_members)
}

/// One request of [`check_answers`]: method, the spec's path template, the URI sent (a query
/// string allowed), headers, an optional JSON body, and the status expected.
pub struct Case<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub uri: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a str>,
    pub status: u16,
}

impl<'a> Case<'a> {
    /// A GET without headers.
    pub fn get(path: &'a str, uri: &'a str, status: u16) -> Self {
        Self {
            method: "GET",
            path,
            uri,
            headers: &[],
            body: None,
            status,
        }
    }
}

/// Sends each case to `router` and checks that it answers the expected status, that the status
/// is documented for that operation, and that a JSON answer matches its documented schema
/// ([`check_response`]). Returns the JSON bodies, in order (`Null` where not JSON).
pub async fn check_answers(
    router: &axum::Router,
    spec: &utoipa::openapi::OpenApi,
    cases: &[Case<'_>],
) -> anyhow::Result<Vec<Value>> {
    let mut problems = Vec::new();
    let mut bodies = Vec::new();
    for case in cases {
        let (status, body) = send(router, case.method, case.uri, case.headers, case.body).await?;
        let json = serde_json::from_slice::<Value>(&body).unwrap_or_default();
        if status != case.status {
            problems.push(format!(
                "{} {} answered {status}, expected {}: {}",
                case.method,
                case.uri,
                case.status,
                String::from_utf8_lossy(&body)
            ));
        } else if !json.is_null()
            && let Err(e) = check_response(spec, case.method, case.path, status, &json)
        {
            problems.push(format!("{} {}: {e:#}", case.method, case.uri));
        }
        bodies.push(json);
    }
    if problems.is_empty() {
        Ok(bodies)
    } else {
        anyhow::bail!("{}", problems.join("\n"))
    }
}

/// (METHOD, path, operation) of every operation in the spec, sorted.
pub fn documented_operations(
    spec: &utoipa::openapi::OpenApi,
) -> Vec<(String, String, utoipa::openapi::path::Operation)> {
    let mut out = Vec::new();
    for (path, item) in &spec.paths.paths {
        for (method, operation) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ] {
            if let Some(operation) = operation {
                out.push((method.to_owned(), path.clone(), operation.clone()));
            }
        }
    }
    out.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    out
}

fn operation_problems(path: &str, operation: &utoipa::openapi::path::Operation) -> Vec<String> {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::ParameterIn;
    let mut problems = Vec::new();
    let documented_path_params: Vec<String> = operation
        .parameters
        .iter()
        .flatten()
        .filter_map(|p| match p {
            RefOr::T(p) if p.parameter_in == ParameterIn::Path => Some(p.name.clone()),
            _ => None,
        })
        .collect();
    for name in template_params(path) {
        if !documented_path_params.contains(&name) {
            problems.push(format!("{path}: path parameter {name} is not documented"));
        }
    }
    if operation.responses.responses.is_empty() {
        problems.push(format!("{path}: no responses documented"));
    }
    for (status, response) in &operation.responses.responses {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if !is_error || (path == "/readyz" && status == "503") {
            continue;
        }
        let problem_only = match response {
            RefOr::T(r) => {
                !r.content.is_empty()
                    && r.content
                        .keys()
                        .all(|c| c == crate::http::PROBLEM_CONTENT_TYPE)
            }
            RefOr::Ref(_) => true,
        };
        if !problem_only {
            problems.push(format!(
                "{path}: the {status} response is not documented as {}",
                crate::http::PROBLEM_CONTENT_TYPE
            ));
        }
    }
    problems
}

fn template_params(path: &str) -> Vec<String> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The template with each `{name}` replaced by its value in `path_params`, else `placeholder`.
fn fill_path(path: &str, path_params: &[(&str, &str)]) -> String {
    let mut uri = path.to_owned();
    for name in template_params(path) {
        let value = path_params
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("placeholder", |(_, v)| v);
        uri = uri.replace(&format!("{{{name}}}"), value);
    }
    uri
}

fn is_no_such_route(body: &[u8]) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .is_some_and(|d| d == crate::http::NO_SUCH_ROUTE)
}

#[cfg(test)]
mod tests {
    use crate::http::{Problem, docs_router, not_found_fallback};
    use axum::extract::Path;
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;

    #[utoipa::path(
        get,
        path = "/things/{id}",
        params(("id" = String, Path, description = "A thing")),
        responses(
            (status = 200, description = "The thing", body = String),
            (status = 404, description = "No such thing", body = Problem,
                content_type = "application/problem+json"),
        ),
    )]
    async fn get_thing(Path(id): Path<String>) -> Result<String, Problem> {
        if id == "known" {
            Ok(id)
        } else {
            Err(Problem::not_found("no such thing"))
        }
    }

    #[utoipa::path(post, path = "/things", responses((status = 201, description = "Made")))]
    async fn make_thing() -> axum::http::StatusCode {
        axum::http::StatusCode::CREATED
    }

    #[derive(serde::Serialize, utoipa::ToSchema)]
    struct Info {
        name: String,
        size: Option<i64>,
        tags: Vec<String>,
    }

    #[utoipa::path(
        get,
        path = "/things/{id}/info",
        params(("id" = String, Path, description = "A thing")),
        responses((status = 200, description = "About the thing", body = Info)),
    )]
    async fn thing_info(Path(id): Path<String>) -> axum::Json<Info> {
        axum::Json(Info {
            name: id,
            size: None,
            tags: Vec::new(),
        })
    }

    fn parts() -> (axum::Router, utoipa::openapi::OpenApi) {
        let (router, spec) = OpenApiRouter::new()
            .routes(routes!(get_thing))
            .routes(routes!(thing_info))
            .routes(routes!(make_thing))
            .split_for_parts();
        (
            router
                .merge(docs_router(spec.clone()))
                .fallback(not_found_fallback),
            spec,
        )
    }

    const EXPECTED: &[(&str, &str)] = &[
        ("GET", "/things/{id}"),
        ("GET", "/things/{id}/info"),
        ("POST", "/things"),
    ];

    #[tokio::test]
    async fn agreeing_spec_and_router_pass_and_a_resource_404_is_not_a_missing_route() {
        let (router, spec) = parts();
        let answers = super::check_spec_against_router(router, &spec, EXPECTED, &[])
            .await
            .unwrap();
        let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        // "placeholder" is an unknown thing: the route's own 404, not the fallback's.
        assert_eq!(statuses, vec![201, 404, 200]);
    }

    #[tokio::test]
    async fn a_route_missing_from_the_expected_set_fails() {
        let (router, spec) = parts();
        let err = super::check_spec_against_router(
            router,
            &spec,
            &[("GET", "/things/{id}"), ("GET", "/things/{id}/info")],
            &[("id", "known")],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("in the spec but not expected: POST /things"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_documented_path_that_is_not_routed_fails() {
        let (router, mut spec) = parts();
        let item = spec.paths.paths["/things"].clone();
        spec.paths.paths.insert("/gone".into(), item);
        let mut expected = EXPECTED.to_vec();
        expected.push(("POST", "/gone"));
        let err = super::check_spec_against_router(router, &spec, &expected, &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("documented but not routed: POST /gone"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_wrong_method_is_caught() {
        let (router, mut spec) = parts();
        let mut item = spec.paths.paths["/things"].clone();
        item.put = item.post.take();
        spec.paths.paths.insert("/things".into(), item);
        let err = super::check_spec_against_router(
            router,
            &spec,
            &[
                ("GET", "/things/{id}"),
                ("GET", "/things/{id}/info"),
                ("PUT", "/things"),
            ],
            &[],
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("documented but not routed: PUT /things"),
            "{err}"
        );
    }

    #[test]
    fn responses_are_checked_against_their_schema() {
        use super::check_response;
        use serde_json::json;
        let (_, spec) = parts();
        let info = |body| check_response(&spec, "GET", "/things/{id}/info", 200, &body);
        info(json!({"name": "x", "size": null, "tags": ["a"]})).unwrap();
        info(json!({"name": "x", "size": 3, "tags": []})).unwrap();
        let err = info(json!({"name": "x", "size": 3, "tags": [], "extra": 1}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("$: Unevaluated properties are not allowed ('extra' was unexpected)"),
            "{err}"
        );
        let err = info(json!({"size": 3, "tags": []}))
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"$: "name" is a required property"#), "{err}");
        let err = info(json!({"name": 1, "size": "3", "tags": [2]}))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"$/name: 1 is not of type "string""#),
            "{err}"
        );
        assert!(err.contains(r#"$/size: "3" is not of type"#), "{err}");
        assert!(
            err.contains(r#"$/tags/0: 2 is not of type "string""#),
            "{err}"
        );
        // A problem may carry extensions.
        let problem = json!({"type": "urn:eventbank:problem:not-found", "title": "Not found",
            "status": 404, "detail": "no such thing", "account_id": "ACC-0001"});
        check_response(&spec, "GET", "/things/{id}", 404, &problem).unwrap();
        let err = check_response(&spec, "GET", "/things/{id}", 404, &json!({"title": "x"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains(r#"$: "type" is a required property"#), "{err}");
    }

    #[derive(serde::Serialize, utoipa::ToSchema)]
    struct Summary {
        id: String,
    }

    #[derive(serde::Serialize, utoipa::ToSchema)]
    struct Detail {
        #[serde(flatten)]
        summary: Summary,
        parent: Option<Summary>,
    }

    #[utoipa::path(get, path = "/detail", responses((status = 200, description = "A", body = Detail)))]
    async fn detail() -> axum::Json<Detail> {
        axum::Json(Detail {
            summary: Summary { id: "x".into() },
            parent: None,
        })
    }

    #[test]
    fn flattened_and_optional_members_are_checked_too() {
        use super::check_response;
        use serde_json::json;
        let (_, spec) = OpenApiRouter::<()>::new()
            .routes(routes!(detail))
            .split_for_parts();
        let check = |body| check_response(&spec, "GET", "/detail", 200, &body);
        check(json!({"id": "a", "parent": null})).unwrap();
        check(json!({"id": "a", "parent": {"id": "b"}})).unwrap();
        for (body, expected) in [
            (json!({"parent": null}), r#"$: "id" is a required property"#),
            (
                json!({"id": "a", "parent": null, "x": 1}),
                "'x' was unexpected",
            ),
            // An Option is a oneOf (null or the object): the branches are what fails.
            (
                json!({"id": "a", "parent": {"id": "b", "y": 1}}),
                "$/parent: ",
            ),
            (json!({"id": "a", "parent": {}}), "$/parent: "),
        ] {
            let err = check(body).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn the_problem_schema_names_the_standard_members() {
        let (_, spec) = parts();
        let json = serde_json::to_value(&spec).unwrap();
        let problem = &json["components"]["schemas"]["Problem"];
        assert_eq!(
            problem["required"],
            serde_json::json!(["type", "title", "status", "detail"])
        );
        assert_eq!(problem["additionalProperties"], true);
        let response = &json["paths"]["/things/{id}"]["get"]["responses"]["404"];
        assert_eq!(
            response["content"]["application/problem+json"]["schema"]["$ref"],
            "#/components/schemas/Problem"
        );
    }
}
