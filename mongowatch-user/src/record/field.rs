//! Field access by contract name: what the formats, the filter and the rate summary read.

use super::{format_time, secs, Record};

/// One field's value, ready to render.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue<'a> {
    Null,
    Str(&'a str),
    Owned(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Compact JSON of an object or array (Filter, Error).
    Json(String),
}

fn opt_str<S: AsRef<str>>(v: &Option<S>) -> FieldValue<'_> {
    v.as_ref()
        .map_or(FieldValue::Null, |s| FieldValue::Str(s.as_ref()))
}

fn opt_int(v: Option<i64>) -> FieldValue<'static> {
    v.map_or(FieldValue::Null, FieldValue::Int)
}

/// The value of field `name` (a contract field name); `None` for an unknown name.
pub fn field_value<'a>(r: &'a Record, name: &str) -> Option<FieldValue<'a>> {
    use FieldValue as V;
    Some(match name {
        "WatchID" => V::Str(&r.watch_id),
        "StartTime" => V::Owned(format_time(r.start_ns)),
        "EndTime" => V::Owned(format_time(r.end_ns)),
        "Duration" => V::Float(secs(r.duration_ns)),
        "DB" => V::Str(&r.db),
        "Collection" => opt_str(&r.collection),
        "Operation" => V::Str(&r.operation),
        "Filter" => r
            .filter
            .as_ref()
            .map_or(V::Null, |f| V::Json(f.to_json_string())),
        "MatchedCount" => opt_int(r.matched),
        "InsertedCount" => opt_int(r.inserted),
        "UpsertedCount" => opt_int(r.upserted),
        "ModifiedCount" => opt_int(r.modified),
        "DeletedCount" => opt_int(r.deleted),
        "Iteration" => V::Int(r.iteration.into()),
        "State" => V::Str(r.state.as_str()),
        "CursorId" => opt_int(r.cursor_id),
        "Error" => r.error.as_ref().map_or(V::Null, |e| {
            V::Json(serde_json::to_string(e).unwrap_or_default())
        }),
        "Pid" => V::Int(r.pid.into()),
        "Comm" => V::Str(&r.comm),
        "Client" => V::Str(&r.client),
        "Server" => V::Str(&r.server),
        "User" => opt_str(&r.user),
        "AppName" => opt_str(&r.app_name),
        "Driver" => opt_str(&r.driver),
        "Compression" => opt_str(&r.compression),
        "Tls" => V::Bool(r.tls),
        "RequestBytes" => V::Int(r.request_bytes.min(i64::MAX as u64) as i64),
        "ReplyBytes" => V::Int(r.reply_bytes.min(i64::MAX as u64) as i64),
        "ContainerId" => opt_str(&r.place.container_id),
        "Node" => opt_str(&r.place.node),
        "Side" => V::Str(r.place.side.as_str()),
        "K8sNamespace" => opt_str(&r.place.k8s_namespace),
        "K8sPod" => opt_str(&r.place.k8s_pod),
        "K8sPodUid" => opt_str(&r.place.k8s_pod_uid),
        "K8sContainer" => opt_str(&r.place.k8s_container),
        _ => return None,
    })
}
