//! One entry per device API operation: its method and path, what it needs
//! (mutual TLS only, or a session too, and which permission), its request,
//! its answers. The device's router is checked against this table and
//! docs/openapi.json is generated from it.

use utoipa::openapi::schema::{Schema, SchemaType, Type};
use utoipa::openapi::{ObjectBuilder, RefOr};

/// A schema and the named schemas it refers to.
pub type SchemaFn = fn(&mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema>;

/// The schema of `T`, as a reference to its named component (collected
/// into `out` with everything it refers to).
pub fn schema_of<T: utoipa::ToSchema>(out: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    T::schemas(out);
    let name = T::name();
    out.push((name.to_string(), T::schema()));
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(name))
}

/// Any JSON object (an answer whose shape is open, such as the OpenAPI
/// document itself).
pub fn any_object(_: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Object))
            .build(),
    ))
}

/// An HTTP method of the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    /// GET
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
}

impl Method {
    /// The method's name, upper case.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// What a caller must present besides its TLS client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Mutual TLS only.
    MutualTls,
    /// Mutual TLS and a session (`Authorization: Bearer SESSION`).
    Session,
}

/// A request or answer body.
#[derive(Clone, Copy)]
pub enum Body {
    /// JSON of the given schema.
    Json(SchemaFn),
    /// Raw bytes of the given media type.
    Bytes(&'static str),
}

/// A path or query parameter.
#[derive(Clone, Copy)]
pub struct Param {
    /// Its name.
    pub name: &'static str,
    /// In the path (always required) or in the query.
    pub in_path: bool,
    /// Whether a query parameter must be present.
    pub required: bool,
    /// Its schema.
    pub schema: SchemaFn,
    /// What it means.
    pub description: Option<&'static str>,
}

/// An answer besides 200 and the shared error answers.
#[derive(Clone, Copy)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// What it means.
    pub description: &'static str,
    /// Its body; `None` for the shared error body.
    pub body: Option<Body>,
}

/// One operation of the API.
#[derive(Clone)]
pub struct Route {
    /// The method.
    pub method: Method,
    /// The path, with `{name}` for path parameters (axum's syntax too).
    pub path: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
    /// The rules: permission, refusals, limits.
    pub description: Option<&'static str>,
    /// The group it is listed under.
    pub tag: Option<&'static str>,
    /// The permission it requires, when one does.
    pub permission: Option<&'static str>,
    /// Mutual TLS only, or a session too.
    pub auth: Auth,
    /// Path and query parameters.
    pub params: Vec<Param>,
    /// Query parameters from a type (`utoipa::IntoParams`), which the
    /// device's query extractor uses too.
    pub query_type: Option<fn() -> Vec<utoipa::openapi::path::Parameter>>,
    /// The request body, when it takes one.
    pub request: Option<Body>,
    /// Whether the request body may be left out.
    pub request_optional: bool,
    /// The 200 answer.
    pub response: Body,
    /// Other answers.
    pub answers: Vec<Answer>,
}

impl Route {
    /// A new operation answering `200` with `response`.
    pub fn new(method: Method, path: &'static str, summary: &'static str, response: Body) -> Self {
        Route {
            method,
            path,
            summary,
            description: None,
            tag: None,
            permission: None,
            auth: Auth::Session,
            params: Vec::new(),
            query_type: None,
            request: None,
            request_optional: false,
            response,
            answers: Vec::new(),
        }
    }

    /// Sets the description.
    pub fn describe(mut self, text: &'static str) -> Self {
        self.description = Some(text);
        self
    }

    /// Sets the tag.
    pub fn tag(mut self, tag: &'static str) -> Self {
        self.tag = Some(tag);
        self
    }

    /// Sets the permission required.
    pub fn permission(mut self, permission: &'static str) -> Self {
        self.permission = Some(permission);
        self
    }

    /// Mutual TLS suffices; no session.
    pub fn tls_only(mut self) -> Self {
        self.auth = Auth::MutualTls;
        self
    }

    /// A path parameter of type string.
    pub fn path_param(mut self, name: &'static str) -> Self {
        self.params.push(Param {
            name,
            in_path: true,
            required: true,
            schema: string,
            description: None,
        });
        self
    }

    /// A query parameter.
    pub fn query(
        mut self,
        name: &'static str,
        required: bool,
        schema: SchemaFn,
        description: Option<&'static str>,
    ) -> Self {
        self.params.push(Param {
            name,
            in_path: false,
            required,
            schema,
            description,
        });
        self
    }

    /// The query parameters of type `T`.
    pub fn query_type<T: utoipa::IntoParams>(mut self) -> Self {
        self.query_type =
            Some(|| T::into_params(|| Some(utoipa::openapi::path::ParameterIn::Query)));
        self
    }

    /// The request body.
    pub fn request(mut self, body: Body) -> Self {
        self.request = Some(body);
        self
    }

    /// A request body that may be left out.
    pub fn optional_request(mut self, body: Body) -> Self {
        self.request = Some(body);
        self.request_optional = true;
        self
    }

    /// Another answer with its own body.
    pub fn answer(mut self, status: u16, description: &'static str, body: Body) -> Self {
        self.answers.push(Answer {
            status,
            description,
            body: Some(body),
        });
        self
    }

    /// Another status answered with the shared error body.
    pub fn error(mut self, status: u16) -> Self {
        self.answers.push(Answer {
            status,
            description: "Error",
            body: None,
        });
        self
    }
}

/// A string.
pub fn string(_: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::String))
            .build(),
    ))
}

/// An unsigned integer.
pub fn integer(_: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Integer))
            .minimum(Some(0))
            .build(),
    ))
}
