//! The CustomResourceDefinitions igw understands, generated from the Rust types, and a
//! field-by-field comparison with upstream's CRD files.
//!
//! Generation uses kube's derive (schemars 1 with kube's structural-schema transforms). One
//! post-processing step runs on every schema: `nullable: true`, which kube adds to every
//! `Option` field, is removed, because upstream's CRDs never set it (an absent field and a
//! null are the same to the API server after pruning). Every CRD also gets upstream's
//! `listKind` and the `apiVersion`/`kind`/`metadata` properties that controller-gen writes, and
//! the x-k8s CRDs lose the root `required: [spec]` that kube's derive always adds (upstream's
//! types mark their spec optional there; igw still needs one to use an object).

use std::collections::BTreeSet;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionNames, CustomResourceDefinitionSpec,
    CustomResourceDefinitionVersion, CustomResourceSubresourceStatus, CustomResourceSubresources,
    CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::CustomResourceExt;
use serde_json::{Value, json};

use crate::api::{InferenceModelRewrite, InferenceObjective, InferencePool, InferencePoolImport};
use crate::legacy;

/// The current CRDs: InferencePool v1, InferenceObjective, InferenceModelRewrite,
/// InferencePoolImport.
pub fn current() -> Vec<CustomResourceDefinition> {
    vec![
        finish(InferencePool::crd(), true),
        finish(InferenceObjective::crd(), false),
        finish(InferenceModelRewrite::crd(), false),
        finish(pool_import_crd(), false),
    ]
}

/// The legacy v1alpha2 CRDs: InferencePool and InferenceModel.
pub fn legacy() -> Vec<CustomResourceDefinition> {
    vec![finish(legacy::InferencePool::crd(), false), finish(legacy::InferenceModel::crd(), false)]
}

/// CRDs as multi-document YAML.
pub fn to_yaml(crds: &[CustomResourceDefinition]) -> Result<String, serde_saphyr::ser_error::Error> {
    let mut out = String::new();
    for crd in crds {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(crd)?);
    }
    Ok(out)
}

fn finish(mut crd: CustomResourceDefinition, spec_required: bool) -> CustomResourceDefinition {
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    for v in &mut crd.spec.versions {
        if let Some(schema) = v.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut())
            && let Ok(mut value) = serde_json::to_value(&*schema)
        {
            strip_nullable(&mut value);
            if let Some(obj) = value.as_object_mut() {
                if !spec_required {
                    obj.remove("required");
                }
                if let Some(props) = obj.get_mut("properties").and_then(Value::as_object_mut) {
                    props.insert("apiVersion".into(), json!({"type": "string", "description": API_VERSION_DOC}));
                    props.insert("kind".into(), json!({"type": "string", "description": KIND_DOC}));
                    props.insert("metadata".into(), json!({"type": "object"}));
                }
            }
            if let Ok(fixed) = serde_json::from_value::<JSONSchemaProps>(value) {
                *schema = fixed;
            }
        }
    }
    crd
}

const API_VERSION_DOC: &str = "APIVersion defines the versioned schema of this representation of an object.";
const KIND_DOC: &str = "Kind is a string value representing the REST resource this object represents.";

fn strip_nullable(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("nullable");
            map.values_mut().for_each(strip_nullable);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nullable),
        _ => {}
    }
}

/// InferencePoolImport has no spec, which kube's derive cannot express, so its CRD is built here
/// from the schema of the hand-written type.
fn pool_import_crd() -> CustomResourceDefinition {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .with_transform(kube::core::schema::OptionalEnum)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<InferencePoolImport>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("title");
        obj.insert("description".into(), json!("InferencePoolImport is the Schema for the InferencePoolImports API."));
    }
    let schema: Option<JSONSchemaProps> = serde_json::from_value(schema).ok();
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some("inferencepoolimports.inference.networking.x-k8s.io".into()),
            annotations: Some(
                [("inference.networking.k8s.io/bundle-version".to_string(), "main-dev".to_string())].into(),
            ),
            ..ObjectMeta::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: "inference.networking.x-k8s.io".into(),
            names: CustomResourceDefinitionNames {
                kind: "InferencePoolImport".into(),
                list_kind: Some("InferencePoolImportList".into()),
                plural: "inferencepoolimports".into(),
                short_names: Some(vec!["infpimp".into()]),
                singular: Some("inferencepoolimport".into()),
                ..CustomResourceDefinitionNames::default()
            },
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: "v1alpha1".into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation { open_api_v3_schema: schema }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(json!({}))),
                    scale: None,
                }),
                ..CustomResourceDefinitionVersion::default()
            }],
            ..CustomResourceDefinitionSpec::default()
        },
        status: None,
    }
}

/// Schema keywords compared between two CRDs (descriptions and formats are not compared).
const COMPARED: &[&str] = &[
    "type",
    "required",
    "enum",
    "default",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-int-or-string",
];

/// Differences between two CRDs (as JSON), one line each: names, scope, versions, printer
/// columns, subresources, and every schema keyword in [`COMPARED`] at every path. Empty when
/// they agree.
pub fn compare(ours: &Value, upstream: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for key in ["group", "names", "scope"] {
        if ours["spec"][key] != upstream["spec"][key] {
            out.push(format!("spec.{key}: ours {} upstream {}", ours["spec"][key], upstream["spec"][key]));
        }
    }
    let empty = Vec::new();
    let versions = |v: &Value| -> Vec<Value> { v["spec"]["versions"].as_array().unwrap_or(&empty).clone() };
    let (ov, uv) = (versions(ours), versions(upstream));
    for u in &uv {
        let name = u["name"].as_str().unwrap_or_default();
        let Some(o) = ov.iter().find(|o| o["name"] == u["name"]) else {
            out.push(format!("version {name}: missing in ours"));
            continue;
        };
        for key in ["served", "storage", "subresources", "additionalPrinterColumns", "deprecated"] {
            if o[key] != u[key] {
                out.push(format!("{name}.{key}: ours {} upstream {}", o[key], u[key]));
            }
        }
        compare_schema(name, &o["schema"]["openAPIV3Schema"], &u["schema"]["openAPIV3Schema"], &mut out);
    }
    for o in &ov {
        if !uv.iter().any(|u| u["name"] == o["name"]) {
            out.push(format!("version {}: not upstream", o["name"]));
        }
    }
    out
}

fn compare_schema(path: &str, ours: &Value, upstream: &Value, out: &mut Vec<String>) {
    for key in COMPARED {
        let (o, u) = (&ours[*key], &upstream[*key]);
        let same = match (o, u) {
            // `required` is a set.
            (Value::Array(a), Value::Array(b)) if *key == "required" => {
                let set = |v: &[Value]| v.iter().map(Value::to_string).collect::<BTreeSet<_>>();
                a.len() == b.len() && set(a) == set(b)
            }
            // Numbers compare by value (1 and 1.0).
            (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
            _ => o == u,
        };
        if !same {
            out.push(format!("{path}: {key}: ours {o} upstream {u}"));
        }
    }
    let keys = |v: &Value| -> BTreeSet<String> {
        v["properties"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    };
    let (ok, uk) = (keys(ours), keys(upstream));
    for k in ok.union(&uk) {
        let p = format!("{path}.{k}");
        match (ok.contains(k), uk.contains(k)) {
            (true, true) => compare_schema(&p, &ours["properties"][k], &upstream["properties"][k], out),
            (true, false) => out.push(format!("{p}: property not upstream")),
            _ => out.push(format!("{p}: property missing in ours")),
        }
    }
    for sub in ["items", "additionalProperties"] {
        let (o, u) = (&ours[sub], &upstream[sub]);
        match (o.is_object(), u.is_object()) {
            (true, true) => compare_schema(&format!("{path}[{sub}]"), o, u, out),
            (false, false) if o == u => {}
            _ => out.push(format!("{path}: {sub}: ours {o} upstream {u}")),
        }
    }
}
