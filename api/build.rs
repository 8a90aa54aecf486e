//! Generates the prost types, and gives the `cairn.v1` messages Mesos' JSON form.
//!
//! Every `cairn.v1` message derives serde; every field gets its attributes from its
//! descriptor (see [`json_attribute`]), so a field added to the .proto files gets the right
//! JSON form without anyone remembering to list it here. The helpers the attributes name
//! are in `src/json.rs`.

use std::collections::HashMap;

use heck::{ToSnakeCase, ToUpperCamelCase};
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FieldDescriptorProto};

/// The package whose messages speak Mesos' JSON (`cairn.internal` does not need it).
const JSON_PACKAGE: &str = "cairn.v1";
/// Where the generated `cairn.v1` types are, as `src/lib.rs` includes them.
const RUST_MODULE: &str = "crate::v1";
const FIELDS: &str = "crate::json::fields";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/cairn/mesos.proto",
        "proto/cairn/scheduler.proto",
        "proto/cairn/internal.proto",
    ];
    let fds = tonic_prost_build::Config::new().load_fds(&protos, &["proto"])?;

    let mut builder = tonic_prost_build::configure().message_attribute(
        format!(".{JSON_PACKAGE}"),
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
    );
    let files = fds.file.iter().filter(|f| f.package() == JSON_PACKAGE);
    let mut enums = HashMap::new();
    for file in files.clone() {
        for e in &file.enum_type {
            enums.insert(format!(".{JSON_PACKAGE}.{}", e.name()), enum_info(&[], e));
        }
        for m in &file.message_type {
            collect_enums(&mut enums, &[], m);
        }
    }
    for file in files {
        for m in &file.message_type {
            builder = add_field_attributes(builder, &enums, &format!(".{JSON_PACKAGE}"), m);
        }
    }
    builder.compile_fds(fds)?;

    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}

/// An enum's Rust type, and whether its zero value is Cairn's `UNSET` (not a Mesos value,
/// so it is left out of the JSON rather than written).
struct EnumInfo {
    rust_path: String,
    zero_is_unset: bool,
}

fn enum_info(outer: &[&str], e: &prost_types::EnumDescriptorProto) -> EnumInfo {
    let modules: String = outer
        .iter()
        .map(|m| format!("::{}", m.to_snake_case()))
        .collect();
    EnumInfo {
        rust_path: format!("{RUST_MODULE}{modules}::{}", e.name().to_upper_camel_case()),
        zero_is_unset: e
            .value
            .iter()
            .any(|v| v.number() == 0 && v.name() == "UNSET"),
    }
}

fn collect_enums(enums: &mut HashMap<String, EnumInfo>, outer: &[&str], m: &DescriptorProto) {
    let mut path = outer.to_vec();
    path.push(m.name());
    for e in &m.enum_type {
        let full = format!(".{JSON_PACKAGE}.{}.{}", path.join("."), e.name());
        enums.insert(full, enum_info(&path, e));
    }
    for nested in &m.nested_type {
        collect_enums(enums, &path, nested);
    }
}

fn add_field_attributes(
    mut builder: tonic_prost_build::Builder,
    enums: &HashMap<String, EnumInfo>,
    scope: &str,
    m: &DescriptorProto,
) -> tonic_prost_build::Builder {
    let name = format!("{scope}.{}", m.name());
    for field in &m.field {
        let attribute = json_attribute(enums, &name, m, field);
        builder = builder.field_attribute(format!("{name}.{}", field.name()), attribute);
    }
    for nested in &m.nested_type {
        builder = add_field_attributes(builder, enums, &name, nested);
    }
    builder
}

/// The serde attribute giving one field its Mesos JSON form.
fn json_attribute(
    enums: &HashMap<String, EnumInfo>,
    message: &str,
    m: &DescriptorProto,
    field: &FieldDescriptorProto,
) -> String {
    let is_map = field.r#type() == Type::Message
        && m.nested_type.iter().any(|n| {
            field.type_name().ends_with(&format!(".{}", n.name()))
                && n.options.as_ref().is_some_and(|o| o.map_entry())
        });
    if is_map {
        unsupported(message, field, "a map field");
    }
    let optional = field.proto3_optional();
    if field.oneof_index.is_some() && !optional {
        unsupported(message, field, "a oneof field");
    }
    let repeated = field.label() == Label::Repeated;
    let is_64_bit = matches!(
        field.r#type(),
        Type::Int64 | Type::Uint64 | Type::Sint64 | Type::Fixed64 | Type::Sfixed64
    );

    // The proto name, whatever Rust name prost gives the field (`type` is `r#type`).
    let mut parts = vec![format!("rename = {:?}", field.name())];
    if field.name() == "agent_id" {
        // Mesos clients still send the v0 name in places.
        parts.push(r#"alias = "slave_id""#.to_owned());
    }
    if repeated {
        if matches!(field.r#type(), Type::Enum | Type::Bytes) || is_64_bit {
            unsupported(message, field, "a repeated enum, bytes or 64-bit field");
        }
        parts.push(r#"skip_serializing_if = "Vec::is_empty""#.to_owned());
    } else if optional || field.r#type() == Type::Message {
        parts.push(r#"skip_serializing_if = "Option::is_none""#.to_owned());
    }

    match field.r#type() {
        Type::Enum => {
            let info = enums
                .get(field.type_name())
                .unwrap_or_else(|| unsupported(message, field, "an enum from another package"));
            let module = if optional {
                "optional_enum"
            } else {
                "enum_value"
            };
            let ty = &info.rust_path;
            parts.push(format!(
                r#"serialize_with = "{FIELDS}::{module}::serialize::<{ty}, _>""#
            ));
            parts.push(format!(
                r#"deserialize_with = "{FIELDS}::{module}::deserialize::<{ty}, _>""#
            ));
            if info.zero_is_unset && !optional {
                parts.push(format!(r#"skip_serializing_if = "{FIELDS}::is_zero""#));
            }
        }
        Type::Bytes => {
            if optional {
                unsupported(message, field, "an optional bytes field");
            }
            parts.push(format!(r#"with = "{FIELDS}::base64""#));
            parts.push(r#"skip_serializing_if = "Vec::is_empty""#.to_owned());
        }
        _ if is_64_bit => {
            let module = if optional { "optional_int64" } else { "int64" };
            parts.push(format!(
                r#"deserialize_with = "{FIELDS}::{module}::deserialize""#
            ));
        }
        Type::String if !optional && !repeated => {
            parts.push(r#"skip_serializing_if = "String::is_empty""#.to_owned());
        }
        Type::Bool if !optional && !repeated => {
            parts.push(format!(r#"skip_serializing_if = "{FIELDS}::is_false""#));
        }
        _ => {}
    }
    format!("#[serde({})]", parts.join(", "))
}

fn unsupported(message: &str, field: &FieldDescriptorProto, what: &str) -> ! {
    panic!(
        "{message}.{}: {what} has no JSON form yet; add a helper to api/src/json.rs \
         and a case to api/build.rs",
        field.name()
    )
}
