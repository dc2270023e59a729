//! The modbus operations: the Modbus/TCP Security rights table
//! (docs/modbus.md, "Rights").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type,
};

use crate::route::{Body, Method, Route, schema_of};

/// Most roles in a rights table.
const MAX_ROLES: usize = 64;
/// Most grants per role.
const MAX_RULES: usize = 64;
/// The function codes the device serves: read holding registers (3), read
/// input registers (4), write single register (6), write multiple
/// registers (16).
const FUNCTION_CODES: [u8; 4] = [3, 4, 6, 16];

/// The Modbus/TCP Security rights table: per certificate role, the function
/// codes allowed on each register range. Deny by default: a role not in the
/// table, a certificate without a role and any register no grant covers are
/// refused with exception 01. The answer of `GET /api/v1/modbus/rights` and
/// the body of `PUT /api/v1/modbus/rights` (read, changed and sent back
/// whole, so unknown fields are refused both ways: a field this client does
/// not know would otherwise be dropped silently on the way back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusRights {
    /// Grants per role name (exact, case-sensitive match with the role in
    /// the client certificate; 1 to 64 printable ASCII characters without
    /// spaces at either end). At most 64 roles of 64 grants each.
    #[schema(schema_with = roles_schema)]
    pub roles: BTreeMap<String, Vec<ModbusRule>>,
}

/// One grant: these function codes on the registers `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModbusRule {
    /// Function codes allowed: at least one, each 3, 4, 6 or 16.
    #[schema(schema_with = functions_schema)]
    pub functions: Vec<u8>,
    /// First register (zero-based protocol address).
    #[schema(maximum = 65535)]
    pub start: u16,
    /// Last register, inclusive (not before `start`).
    #[schema(maximum = 65535)]
    pub end: u16,
}

/// The answer to a rights table replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ModbusRightsSet {
    /// How many roles the table now in force has.
    pub roles: u64,
}

/// `roles`: a map of role name to at most 64 grants, at most 64 roles (the
/// grant inline: a `schema_with` field names no component).
fn roles_schema() -> Schema {
    Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::Type(Type::Object))
            .description(Some(
                "Grants per role name (exact, case-sensitive match with the role in the client \
                 certificate; 1 to 64 printable ASCII characters without spaces at either end). \
                 At most 64 roles of 64 grants each.",
            ))
            .max_properties(Some(MAX_ROLES))
            .additional_properties(Some(AdditionalProperties::RefOr(RefOr::T(Schema::Array(
                ArrayBuilder::new()
                    .max_items(Some(MAX_RULES))
                    .items(<ModbusRule as utoipa::PartialSchema>::schema())
                    .build(),
            )))))
            .build(),
    )
}

/// `functions`: one or more of the served function codes.
pub(crate) fn functions_schema() -> Schema {
    Schema::Array(
        ArrayBuilder::new()
            .description(Some(
                "Function codes allowed: at least one, each 3, 4, 6 or 16.",
            ))
            .min_items(Some(1))
            .items(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Integer))
                    .enum_values(Some(FUNCTION_CODES)),
            )
            .build(),
    )
}

/// The modbus operations.
pub(crate) fn routes() -> Vec<Route> {
    vec![
        Route::new(Method::Get, "/api/v1/modbus/rights", "The Modbus/TCP Security rights table: per certificate role, the function codes allowed on each register range (docs/modbus.md). Empty until set: deny by default", Body::Json(schema_of::<ModbusRights>))
            .tag("modbus")
            .permission("read-security-settings")
            ,
        Route::new(Method::Put, "/api/v1/modbus/rights", "Replace the Modbus/TCP Security rights table. Checked as a whole first (400 naming the role and rule at fault; 422 for a malformed body); a refused table changes nothing. Applies to the next request of every session", Body::Json(schema_of::<ModbusRightsSet>))
            .tag("modbus")
            .permission("write-security-settings")
            .request(Body::Json(schema_of::<ModbusRights>))
            .error(422)
            ,
    ]
}
