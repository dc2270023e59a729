//! docs/openapi.json, generated from the route table and the types.

use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, Content, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref,
    RefOr, Required, ResponseBuilder, ResponsesBuilder, Schema,
};

use crate::route::{Auth, Body, Method, Route};

const DESCRIPTION: &str = "The drive's HTTPS API. Mutual TLS is required for every connection: in factory state any client certificate whose key the client proves (commissioning endpoints only); once commissioned, a certificate chaining to the owner's installed trust anchors and not revoked by the installed CRL. Connections are kept alive between requests until the device adopts a new identity or trust (commissioning, a CRL or trust-anchor change, LDevID renewal, factory reset, the tamper response): then every open connection finishes the request in flight and closes; the response to the request that made the change carries `Connection: close`, and a request on a connection opened before the change (also a request under a session whose headers came before the change and its body after) is answered `421 {\"error\": \"connection-stale\"}` unprocessed and may be sent again on a new connection. Sessions are bound to the client certificate they were created over and travel as `Authorization: Bearer SESSION`. Request bodies are JSON, size-limited, and unknown fields are rejected. Errors are `{\"error\": CODE, \"message\": TEXT}`; a 500 carries no internal detail. Every answer has `Cache-Control: no-store` and `X-Content-Type-Options: nosniff`. Connection and body limits, and what an attacker can and cannot hold: docs/device-api.md. The request and answer types are the Rust types of the `drivesec-api` crate, from which this document is generated.";

/// The tags and what each groups.
const TAGS: &[(&str, &str)] = &[
    ("device", "The device's identity and this document"),
    (
        "commissioning",
        "Taking ownership of a factory-state device",
    ),
    ("sessions", "Login, logout and the caller's own account"),
    ("accounts", "Accounts and roles"),
    ("audit", "The audit trail and its forwarding"),
    ("security", "Posture, CRL, access policy and factory reset"),
    (
        "firmware",
        "Firmware status, update, reboot, trust and attestation",
    ),
    ("drive", "The drive's state and control"),
    ("modbus", "Modbus/TCP Security rights"),
    ("provisioning", "The applied configuration profile"),
    ("identity", "LDevID renewal"),
];

/// The shared error answers every operation can give.
const ERRORS: &[u16] = &[400, 401, 403, 409, 413, 429, 503];

fn method(m: Method) -> HttpMethod {
    match m {
        Method::Get => HttpMethod::Get,
        Method::Post => HttpMethod::Post,
        Method::Put => HttpMethod::Put,
        Method::Delete => HttpMethod::Delete,
    }
}

fn content(body: Body, schemas: &mut Vec<(String, RefOr<Schema>)>) -> (&'static str, Content) {
    match body {
        Body::Json(f) => ("application/json", Content::new(Some(f(schemas)))),
        Body::Bytes(media) => (
            media,
            Content::new(Some(RefOr::T(Schema::Object(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::SchemaType::Type(
                        utoipa::openapi::schema::Type::String,
                    ))
                    .format(Some(utoipa::openapi::schema::SchemaFormat::KnownFormat(
                        utoipa::openapi::schema::KnownFormat::Binary,
                    )))
                    .build(),
            )))),
        ),
    }
}

fn operation(
    r: &Route,
    schemas: &mut Vec<(String, RefOr<Schema>)>,
) -> utoipa::openapi::path::Operation {
    let mut op = OperationBuilder::new().summary(Some(r.summary));
    let mut description = String::new();
    if let Some(p) = r.permission {
        let all: Vec<String> = p.split(" + ").map(|p| format!("`{p}`")).collect();
        description.push_str(&match all.as_slice() {
            [one] => format!("Requires permission {one}."),
            more => format!("Requires permissions {}.", more.join(" and ")),
        });
    }
    if let Some(d) = r.description {
        if !description.is_empty() {
            description.push(' ');
        }
        description.push_str(d);
    }
    if !description.is_empty() {
        op = op.description(Some(description));
    }
    if let Some(t) = r.tag {
        op = op.tag(t);
    }
    if let Some(p) = r.permission {
        op = op.extensions(Some(
            ExtensionsBuilder::new()
                .add("x-drivesec-permission", p)
                .build(),
        ));
    }
    let mut req = SecurityRequirement::new("mutualTLS", Vec::<String>::new());
    if r.auth == Auth::Session {
        req = req.add("session", Vec::<String>::new());
    }
    op = op.security(req);
    for p in &r.params {
        op = op.parameter(
            ParameterBuilder::new()
                .name(p.name)
                .parameter_in(if p.in_path {
                    ParameterIn::Path
                } else {
                    ParameterIn::Query
                })
                .required(if p.required {
                    Required::True
                } else {
                    Required::False
                })
                .description(p.description)
                .schema(Some((p.schema)(schemas))),
        );
    }
    if let Some(q) = r.query_type {
        for p in q() {
            op = op.parameter(p);
        }
    }
    if let Some(b) = r.request {
        let (media, c) = content(b, schemas);
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(if r.request_optional {
                    Required::False
                } else {
                    Required::True
                }))
                .content(media, c)
                .build(),
        ));
    }
    let mut responses = ResponsesBuilder::new();
    let (media, c) = content(r.response, schemas);
    responses = responses.response(
        "200",
        ResponseBuilder::new()
            .description("OK")
            .content(media, c)
            .build(),
    );
    let mut statuses: Vec<(u16, RefOr<utoipa::openapi::Response>)> = ERRORS
        .iter()
        .map(|s| (*s, RefOr::Ref(Ref::from_response_name("Error"))))
        .collect();
    for a in &r.answers {
        let resp = match a.body {
            None => RefOr::Ref(Ref::from_response_name("Error")),
            Some(b) => {
                let (media, c) = content(b, schemas);
                RefOr::T(
                    ResponseBuilder::new()
                        .description(a.description)
                        .content(media, c)
                        .build(),
                )
            }
        };
        statuses.retain(|(s, _)| *s != a.status);
        statuses.push((a.status, resp));
    }
    statuses.sort_by_key(|(s, _)| *s);
    for (s, resp) in statuses {
        responses = responses.response(s.to_string(), resp);
    }
    op.responses(responses.build()).build()
}

/// The named schemas, each once, sorted by name. Two different schemas
/// under one name (two types of one name in different modules) would make
/// the document lie about one of them: [`name_clashes`] finds them and a
/// test fails on any.
fn distinct(mut schemas: Vec<(String, RefOr<Schema>)>) -> Vec<(String, RefOr<Schema>)> {
    schemas.sort_by(|a, b| a.0.cmp(&b.0));
    schemas.dedup_by(|a, b| a.0 == b.0 && a.1 == b.1);
    schemas
}

/// Names under which the types give two different schemas (should be none).
pub fn name_clashes() -> Vec<String> {
    let mut schemas = Vec::new();
    for r in crate::routes() {
        let _ = operation(&r, &mut schemas);
    }
    let mut clashes: Vec<String> = distinct(schemas)
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[0].0.clone())
        .collect();
    clashes.dedup();
    clashes
}

/// The OpenAPI 3.1 document of the device API.
pub fn document() -> OpenApi {
    let mut schemas = Vec::new();
    let mut paths = PathsBuilder::new();
    let routes = crate::routes();
    let mut seen: Vec<&str> = Vec::new();
    for r in &routes {
        if seen.contains(&r.path) {
            continue;
        }
        seen.push(r.path);
        let mut item: Option<PathItem> = None;
        for same in routes.iter().filter(|o| o.path == r.path) {
            let op = operation(same, &mut schemas);
            match &mut item {
                None => item = Some(PathItem::new(method(same.method), op)),
                Some(i) => i.merge_operations(PathItem::new(method(same.method), op)),
            }
        }
        if let Some(i) = item {
            paths = paths.path(r.path, i);
        }
    }
    let error = crate::route::schema_of::<crate::error::ErrorBody>(&mut schemas);
    // Types no route refers to directly: the attestation statement travels
    // base64-encoded (its exact bytes are what is signed) and is read with
    // this type after the signature is checked.
    let _ = crate::route::schema_of::<crate::firmware::AttestationStatement>(&mut schemas);
    let schemas = distinct(schemas);
    let components = ComponentsBuilder::new()
        .security_scheme(
            "mutualTLS",
            SecurityScheme::MutualTls {
                description: None,
                extensions: None,
            },
        )
        .security_scheme(
            "session",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        )
        .response(
            "Error",
            ResponseBuilder::new()
                .description("Error")
                .content("application/json", Content::new(Some(error)))
                .build(),
        )
        .schemas_from_iter(schemas)
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("drivesecd device API")
                .version("1")
                .description(Some(DESCRIPTION))
                .build(),
        )
        .servers(Some([Server::new("https://127.0.0.1:8443")]))
        .paths(paths.build())
        .components(Some(components))
        .tags(Some(TAGS.iter().map(|(n, d)| {
            TagBuilder::new().name(*n).description(Some(*d)).build()
        })))
        .build()
}

/// The document as checked into docs/openapi.json (pretty, one final
/// newline).
pub fn document_json() -> String {
    let mut s = serde_json::to_string_pretty(&document()).unwrap_or_default();
    s.push('\n');
    s
}
