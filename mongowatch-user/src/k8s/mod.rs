//! Pod metadata from the Kubernetes API: the pods of this node (listed, then watched), indexed
//! by container id and pod uid, and the `--k8s-*` selectors that choose pods. `client` talks
//! to the API server (the in-cluster service account); this module is pure.

pub mod client;

use std::{collections::HashMap, sync::Arc};

use serde::Deserialize;

use crate::record::K8sMeta;

/// A pod as this daemon needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: HashMap<String, String>,
    /// (container id, container name) of every container that has an id (has started).
    pub containers: Vec<(String, String)>,
}

impl Pod {
    /// The record fields of one of its containers.
    pub fn meta(&self, container: Option<&str>) -> K8sMeta {
        K8sMeta {
            namespace: self.namespace.as_str().into(),
            pod: self.name.as_str().into(),
            pod_uid: self.uid.as_str().into(),
            container: container.map(Arc::from),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawMeta {
    name: String,
    namespace: String,
    uid: String,
    labels: HashMap<String, String>,
    resource_version: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawStatus {
    container_statuses: Vec<RawContainer>,
    init_container_statuses: Vec<RawContainer>,
    ephemeral_container_statuses: Vec<RawContainer>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct RawContainer {
    name: String,
    #[serde(rename = "containerID")]
    container_id: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawPod {
    metadata: RawMeta,
    status: RawStatus,
}

impl From<RawPod> for Pod {
    fn from(p: RawPod) -> Self {
        let s = p.status;
        let containers = s
            .container_statuses
            .into_iter()
            .chain(s.init_container_statuses)
            .chain(s.ephemeral_container_statuses)
            .filter_map(|c| Some((container_id(c.container_id.as_deref()?)?, c.name)))
            .collect();
        Pod {
            namespace: p.metadata.namespace,
            name: p.metadata.name,
            uid: p.metadata.uid,
            labels: p.metadata.labels,
            containers,
        }
    }
}

/// `containerd://<64 hex>`, `cri-o://...`, `docker://...`: the id after the runtime's scheme.
fn container_id(s: &str) -> Option<String> {
    let id = s.split_once("://").map_or(s, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the API server's answer is not what was expected: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the API server sent an error event: {0}")]
    Status(String),
}

/// A pod list (`GET /api/v1/pods`): the pods and the resourceVersion to watch from.
pub fn parse_list(body: &[u8]) -> Result<(Vec<Pod>, String), ApiError> {
    #[derive(Deserialize)]
    struct List {
        #[serde(default)]
        metadata: RawMeta,
        #[serde(default)]
        items: Vec<RawPod>,
    }
    let list: List = serde_json::from_slice(body)?;
    Ok((
        list.items.into_iter().map(Pod::from).collect(),
        list.metadata.resource_version.unwrap_or_default(),
    ))
}

/// One event of a watch stream (one JSON object per line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// ADDED or MODIFIED.
    Upsert(Pod, String),
    Deleted(Pod, String),
    /// A BOOKMARK: only the resourceVersion moves.
    Bookmark(String),
    /// The resourceVersion is too old (410 Gone): list again.
    Expired,
}

pub fn parse_event(line: &[u8]) -> Result<WatchEvent, ApiError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "type")]
        kind: String,
        object: serde_json::Value,
    }
    let raw: Raw = serde_json::from_slice(line)?;
    if raw.kind == "ERROR" {
        if raw.object["code"] == 410 {
            return Ok(WatchEvent::Expired);
        }
        return Err(ApiError::Status(raw.object.to_string()));
    }
    let pod: RawPod = serde_json::from_value(raw.object)?;
    let rv = pod.metadata.resource_version.clone().unwrap_or_default();
    Ok(match raw.kind.as_str() {
        "DELETED" => WatchEvent::Deleted(pod.into(), rv),
        "BOOKMARK" => WatchEvent::Bookmark(rv),
        _ => WatchEvent::Upsert(pod.into(), rv),
    })
}

/// What the client tells the daemon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodUpdate {
    /// A fresh list: every pod of the node (the ones not in it are gone).
    Synced(Vec<Pod>),
    Upsert(Pod),
    Deleted(Pod),
}

/// The pods of this node by uid, and their containers by id.
#[derive(Debug, Default)]
pub struct PodIndex {
    pods: HashMap<String, Pod>,
    by_container: HashMap<String, (String, String)>,
    synced: bool,
}

impl PodIndex {
    /// Applies an update; returns the pods that changed (added or updated) and those gone.
    pub fn apply(&mut self, update: PodUpdate) -> (Vec<Pod>, Vec<Pod>) {
        match update {
            PodUpdate::Synced(pods) => {
                self.synced = true;
                let keep: std::collections::HashSet<&str> =
                    pods.iter().map(|p| p.uid.as_str()).collect();
                let gone: Vec<Pod> = self
                    .pods
                    .values()
                    .filter(|p| !keep.contains(p.uid.as_str()))
                    .cloned()
                    .collect();
                for p in &gone {
                    self.remove(p);
                }
                for p in &pods {
                    self.insert(p.clone());
                }
                (pods, gone)
            }
            PodUpdate::Upsert(p) => {
                self.insert(p.clone());
                (vec![p], vec![])
            }
            PodUpdate::Deleted(p) => {
                self.remove(&p);
                (vec![], vec![p])
            }
        }
    }

    fn insert(&mut self, pod: Pod) {
        if let Some(old) = self.pods.get(&pod.uid).cloned() {
            self.remove(&old);
        }
        for (id, name) in &pod.containers {
            self.by_container
                .insert(id.clone(), (pod.uid.clone(), name.clone()));
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    fn remove(&mut self, pod: &Pod) {
        if let Some(old) = self.pods.remove(&pod.uid) {
            for (id, _) in &old.containers {
                self.by_container.remove(id);
            }
        }
    }

    /// The record fields of a container, if its pod is known.
    pub fn container(&self, id: &str) -> Option<K8sMeta> {
        let (uid, name) = self.by_container.get(id)?;
        Some(self.pods.get(uid)?.meta(Some(name)))
    }

    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// Pods chosen by `--k8s-namespace`, `--k8s-pod`, `--k8s-label` (or the keys of a table):
/// every kind given must match (several values of one kind: any; several labels: all).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSelector {
    pub namespaces: Vec<String>,
    pub pods: Vec<String>,
    pub labels: Vec<(String, String)>,
}

impl PodSelector {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.pods.is_empty() && self.labels.is_empty()
    }

    pub fn matches(&self, pod: &Pod) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(&pod.namespace))
            && (self.pods.is_empty() || self.pods.contains(&pod.name))
            && self
                .labels
                .iter()
                .all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not a label KEY=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "7e2a1f0c9b8d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f";

    fn pod_json(name: &str, uid: &str, id: &str) -> String {
        format!(
            r#"{{"kind":"Pod","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"shop","uid":"{uid}","resourceVersion":"42","labels":{{"app":"api","tier":"web"}}}},"spec":{{"nodeName":"node-1"}},"status":{{"phase":"Running","containerStatuses":[{{"name":"api","containerID":"containerd://{id}","ready":true}},{{"name":"sidecar","ready":false}}],"initContainerStatuses":[{{"name":"init","containerID":"cri-o://{}"}}]}}}}"#,
            id.replace('7', "1")
        )
    }

    #[test]
    fn a_list_and_its_pods() {
        let body = format!(
            r#"{{"kind":"PodList","apiVersion":"v1","metadata":{{"resourceVersion":"1234"}},"items":[{}]}}"#,
            pod_json("api-0", "u-1", ID)
        );
        let (pods, rv) = parse_list(body.as_bytes()).unwrap();
        assert_eq!(rv, "1234");
        assert_eq!(pods.len(), 1);
        let p = &pods[0];
        assert_eq!(
            (p.namespace.as_str(), p.name.as_str(), p.uid.as_str()),
            ("shop", "api-0", "u-1")
        );
        assert_eq!(p.labels["app"], "api");
        // The sidecar has not started (no id); the init container has one.
        assert_eq!(p.containers.len(), 2);
        assert_eq!(p.containers[0], (ID.to_string(), "api".to_string()));
    }

    #[test]
    fn watch_events() {
        let added = format!(
            r#"{{"type":"ADDED","object":{}}}"#,
            pod_json("api-0", "u-1", ID)
        );
        match parse_event(added.as_bytes()).unwrap() {
            WatchEvent::Upsert(p, rv) => {
                assert_eq!(p.name, "api-0");
                assert_eq!(rv, "42");
            }
            e => panic!("{e:?}"),
        }
        let deleted = added.replace("ADDED", "DELETED");
        assert!(matches!(
            parse_event(deleted.as_bytes()).unwrap(),
            WatchEvent::Deleted(..)
        ));
        let bookmark =
            r#"{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"99"}}}"#;
        assert_eq!(
            parse_event(bookmark.as_bytes()).unwrap(),
            WatchEvent::Bookmark("99".into())
        );
        let gone = r#"{"type":"ERROR","object":{"kind":"Status","code":410,"reason":"Expired"}}"#;
        assert_eq!(parse_event(gone.as_bytes()).unwrap(), WatchEvent::Expired);
        let other = r#"{"type":"ERROR","object":{"kind":"Status","code":500}}"#;
        assert!(parse_event(other.as_bytes()).is_err());
        assert!(parse_event(b"not json").is_err());
    }

    #[test]
    fn the_index_follows_the_pods_and_a_relist_drops_the_gone() {
        let mut idx = PodIndex::default();
        let pod = |name: &str, uid: &str, id: &str| -> Pod {
            let body = format!(r#"{{"items":[{}]}}"#, pod_json(name, uid, id));
            parse_list(body.as_bytes()).unwrap().0.remove(0)
        };
        let id2 = ID.replace('e', "a");
        let (a, b) = (pod("api-0", "u-1", ID), pod("api-1", "u-2", &id2));
        idx.apply(PodUpdate::Synced(vec![a.clone()]));
        assert!(idx.is_synced());
        assert_eq!(&*idx.container(ID).unwrap().pod, "api-0");
        assert_eq!(idx.container(ID).unwrap().container.as_deref(), Some("api"));
        idx.apply(PodUpdate::Upsert(b.clone()));
        assert_eq!(&*idx.container(&id2).unwrap().pod_uid, "u-2");
        let (_, gone) = idx.apply(PodUpdate::Synced(vec![b]));
        assert_eq!(gone.len(), 1);
        assert!(idx.container(ID).is_none());
        idx.apply(PodUpdate::Deleted(a));
        assert_eq!(idx.len(), 1);
    }

    #[test]
    fn selectors_and_labels() {
        let body = format!(r#"{{"items":[{}]}}"#, pod_json("api-0", "u-1", ID));
        let p = parse_list(body.as_bytes()).unwrap().0.remove(0);
        let sel = |ns: &[&str], pods: &[&str], labels: &[(&str, &str)]| PodSelector {
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            pods: pods.iter().map(|s| s.to_string()).collect(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        assert!(sel(&["shop"], &[], &[]).matches(&p));
        assert!(!sel(&["kube-system"], &[], &[]).matches(&p));
        assert!(sel(&["shop"], &["api-0"], &[("app", "api"), ("tier", "web")]).matches(&p));
        assert!(!sel(&[], &[], &[("app", "api"), ("tier", "db")]).matches(&p));
        assert_eq!(parse_label("app=api"), Ok(("app".into(), "api".into())));
        assert!(parse_label("=x").is_err());
        assert!(parse_label("app").is_err());
    }
}
