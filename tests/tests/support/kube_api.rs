//! A loopback stand-in for the Kubernetes API server, enough for the operator's real
//! `Controller` to run against it: list and watch (newline-delimited JSON events with
//! resource versions), get, create, delete (deletion waits for finalizers, then owned
//! objects are collected), replace with optimistic concurrency (the Lease's), JSON patches
//! (the finalizer's), server-side apply (whole objects; the `status` subresource takes only
//! the status), merge patches, and Events kept for the test to read. It is no API server: no validation, admission, field ownership or RBAC;
//! what it stores is what the operator sent.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// (resource plural, namespace, name)
type Key = (String, String, String);

#[derive(Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    /// Every change: (resource version, plural, namespace, event type, object).
    log: Vec<(u64, String, String, &'static str, Value)>,
    version: u64,
    uids: u64,
}

/// The fake API server's shared state.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
}

/// What a request's path names.
struct Target {
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        rest => (None, rest),
    };
    match rest {
        [plural] => Some(Target {
            plural: plural.to_string(),
            namespace,
            name: None,
            status: false,
        }),
        [plural, name] => Some(Target {
            plural: plural.to_string(),
            namespace,
            name: Some(name.to_string()),
            status: false,
        }),
        [plural, name, "status"] => Some(Target {
            plural: plural.to_string(),
            namespace,
            name: Some(name.to_string()),
            status: true,
        }),
        _ => None,
    }
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    (
        code,
        axum::Json(
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()}),
        ),
    )
        .into_response()
}

fn query(uri: &Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

impl State {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    /// Stores `object` under `key`, stamped with a new resource version, and logs the change.
    fn put(&mut self, key: &Key, mut object: Value, kind: &'static str) -> Value {
        // As the API server does: a write that changes nothing is no new version, no event.
        if let Some(stored) = self.objects.get(key) {
            object["metadata"]["resourceVersion"] = stored["metadata"]["resourceVersion"].clone();
            if *stored == object {
                return object;
            }
        }
        let version = self.bump();
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        self.objects.insert(key.clone(), object.clone());
        self.log
            .push((version, key.0.clone(), key.1.clone(), kind, object.clone()));
        object
    }

    fn remove(&mut self, key: &Key) {
        if let Some(mut object) = self.objects.remove(key) {
            let uid = object_uid(&object);
            let version = self.bump();
            object["metadata"]["resourceVersion"] = json!(version.to_string());
            self.log
                .push((version, key.0.clone(), key.1.clone(), "DELETED", object));
            // Garbage collection: what the removed object owned goes too.
            let owned: Vec<Key> = self
                .objects
                .iter()
                .filter(|(_, o)| {
                    o["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in owned {
                self.remove(&key);
            }
        }
    }

    fn create(&mut self, key: &Key, mut object: Value) -> Value {
        self.uids += 1;
        let metadata = &mut object["metadata"];
        metadata["uid"] = json!(format!("uid-{}", self.uids));
        metadata["namespace"] = json!(key.1);
        metadata["name"] = json!(key.2);
        metadata["generation"] = json!(1);
        metadata["creationTimestamp"] = json!("2026-12-03T00:00:00Z");
        // Secrets: what `stringData` says is stored as `data`.
        if let Some(strings) = object
            .get("stringData")
            .cloned()
            .and_then(|v| serde_json::from_value::<BTreeMap<String, String>>(v).ok())
        {
            let data: BTreeMap<String, k8s_openapi::ByteString> = strings
                .into_iter()
                .map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes())))
                .collect();
            object["data"] = serde_json::to_value(data).unwrap_or_default();
            if let Some(map) = object.as_object_mut() {
                map.remove("stringData");
            }
        }
        self.put(key, object, "ADDED")
    }
}

fn object_uid(object: &Value) -> String {
    object["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

impl FakeApi {
    /// Serves on a free loopback port; returns its address.
    pub async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let api = self.clone();
        let app = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let api = api.clone();
                async move { api.handle(method, uri, headers, body).await }
            },
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        address
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The stored object, if any.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        self.state()
            .objects
            .get(&(plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Every stored object of `plural`.
    pub fn all(&self, plural: &str) -> Vec<Value> {
        self.state()
            .objects
            .iter()
            .filter(|((p, ..), _)| p == plural)
            .map(|(_, o)| o.clone())
            .collect()
    }

    /// Creates `object` (as `kubectl create` would).
    pub fn create(&self, plural: &str, namespace: &str, object: Value) {
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        self.state()
            .create(&(plural.into(), namespace.into(), name), object);
        self.changed.notify_waiters();
    }

    /// Sets an object's status (as its controller would: the StatefulSet controller's part).
    pub fn set_status(&self, plural: &str, namespace: &str, name: &str, status: Value) {
        let key = (plural.to_string(), namespace.to_string(), name.to_string());
        let mut state = self.state();
        if let Some(mut object) = state.objects.get(&key).cloned() {
            object["status"] = status;
            state.put(&key, object, "MODIFIED");
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// Deletes an object (as `kubectl delete` would): marked while finalizers remain.
    pub fn delete(&self, plural: &str, namespace: &str, name: &str) {
        self.delete_key(&(plural.into(), namespace.into(), name.into()));
    }

    fn delete_key(&self, key: &Key) -> Option<Value> {
        let mut state = self.state();
        let object = state.objects.get(key).cloned()?;
        let finalizers = object["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let result = if finalizers {
            let mut marked = object;
            if marked["metadata"]["deletionTimestamp"].is_null() {
                marked["metadata"]["deletionTimestamp"] = json!("2026-12-03T00:00:01Z");
                let generation = marked["metadata"]["generation"].as_i64().unwrap_or(1);
                marked["metadata"]["generation"] = json!(generation + 1);
            }
            Some(state.put(key, marked, "MODIFIED"))
        } else {
            state.remove(key);
            Some(object)
        };
        drop(state);
        self.changed.notify_waiters();
        result
    }

    async fn handle(&self, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        let Some(target) = parse(uri.path()) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("no route {}", uri.path()),
            );
        };
        let namespace = target.namespace.clone().unwrap_or_default();
        match (&method, &target.name) {
            (&Method::GET, None)
                if query(&uri, "watch").is_some_and(|w| w == "true" || w == "1") =>
            {
                let from = query(&uri, "resourceVersion")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                self.watch(target, from)
            }
            (&Method::GET, None) => self.list(&target),
            (&Method::GET, Some(name)) => match self.get(&target.plural, &namespace, name) {
                Some(object) => axum::Json(object).into_response(),
                None => status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{name}\" not found", target.plural),
                ),
            },
            (&Method::POST, None) => {
                let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
                };
                let name = object["metadata"]["name"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("generated-{}", self.state().version + 1));
                let key = (target.plural.clone(), namespace, name.clone());
                let mut state = self.state();
                if state.objects.contains_key(&key) {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", target.plural),
                    );
                }
                let created = state.create(&key, object);
                drop(state);
                self.changed.notify_waiters();
                (StatusCode::CREATED, axum::Json(created)).into_response()
            }
            (&Method::PATCH, Some(name)) => {
                let key = (target.plural.clone(), namespace, name.clone());
                let kind = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                self.patch(&key, &kind, target.status, &body)
            }
            (&Method::PUT, Some(name)) => {
                let Ok(object) = serde_json::from_slice::<Value>(&body) else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
                };
                let key = (target.plural.clone(), namespace, name.clone());
                let mut state = self.state();
                let Some(stored) = state.objects.get(&key).cloned() else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("\"{name}\" not found"),
                    );
                };
                // Optimistic concurrency: a replace names the version it read.
                if object["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("the object has been modified; read \"{name}\" again"),
                    );
                }
                let mut replaced = object;
                for kept in ["uid", "creationTimestamp", "namespace", "name"] {
                    replaced["metadata"][kept] = stored["metadata"][kept].clone();
                }
                let result = state.put(&key, replaced, "MODIFIED");
                drop(state);
                self.changed.notify_waiters();
                axum::Json(result).into_response()
            }
            (&Method::DELETE, Some(name)) => {
                let key = (target.plural.clone(), namespace, name.clone());
                match self.delete_key(&key) {
                    Some(object) => axum::Json(object).into_response(),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("\"{name}\" not found"),
                    ),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} {}", uri.path()),
            ),
        }
    }

    fn list(&self, target: &Target) -> Response {
        let state = self.state();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((p, ns, _), _)| {
                *p == target.plural && target.namespace.as_ref().is_none_or(|want| want == ns)
            })
            .map(|(_, o)| o.clone())
            .collect();
        axum::Json(json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": state.version.to_string()},
            "items": items,
        }))
        .into_response()
    }

    fn watch(&self, target: Target, from: u64) -> Response {
        let api = self.clone();
        let stream = futures_util::stream::unfold(from, move |cursor| {
            let api = api.clone();
            let plural = target.plural.clone();
            let namespace = target.namespace.clone();
            async move {
                loop {
                    let notified = api.changed.notified();
                    let next = {
                        let state = api.state();
                        state
                            .log
                            .iter()
                            .find(|(version, p, ns, ..)| {
                                *version > cursor
                                    && *p == plural
                                    && namespace.as_ref().is_none_or(|want| want == ns)
                            })
                            .map(|(version, _, _, kind, object)| (*version, *kind, object.clone()))
                    };
                    if let Some((version, kind, object)) = next {
                        let mut line =
                            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap();
                        line.push(b'\n');
                        return Some((Ok::<_, std::io::Error>(Bytes::from(line)), version));
                    }
                    notified.await;
                }
            }
        });
        Response::builder()
            .header("content-type", "application/json")
            .body(Body::from_stream(stream))
            .unwrap()
    }

    fn patch(&self, key: &Key, content_type: &str, status_only: bool, body: &[u8]) -> Response {
        let mut state = self.state();
        let existing = state.objects.get(key).cloned();
        let Ok(patch) = serde_json::from_slice::<Value>(body) else {
            return status(StatusCode::BAD_REQUEST, "BadRequest", "not JSON".into());
        };
        let updated = if content_type.starts_with("application/json-patch+json") {
            let Some(mut object) = existing else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{key:?} not found"),
                );
            };
            // As the API server's JSON patch does: a missing field tests equal to null.
            let patch = match patch {
                Value::Array(ops) => Value::Array(
                    ops.into_iter()
                        .filter(|op| {
                            !(op["op"] == "test"
                                && op["value"].is_null()
                                && op["path"]
                                    .as_str()
                                    .is_some_and(|p| object.pointer(p).is_none()))
                        })
                        .collect(),
                ),
                other => other,
            };
            let Ok(operations) = serde_json::from_value::<json_patch::Patch>(patch) else {
                return status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "not a JSON patch".into(),
                );
            };
            if let Err(e) = json_patch::patch(&mut object, &operations) {
                return status(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e.to_string());
            }
            object
        } else if content_type.starts_with("application/apply-patch") {
            match (existing, status_only) {
                (Some(mut object), true) => {
                    object["status"] = patch["status"].clone();
                    object
                }
                (None, true) => {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{key:?} not found"),
                    );
                }
                (Some(object), false) => {
                    let mut applied = patch;
                    for kept in [
                        "uid",
                        "creationTimestamp",
                        "finalizers",
                        "deletionTimestamp",
                        "generation",
                    ] {
                        if !object["metadata"][kept].is_null() {
                            applied["metadata"][kept] = object["metadata"][kept].clone();
                        }
                    }
                    applied["metadata"]["namespace"] = json!(key.1);
                    if !object["status"].is_null() {
                        applied["status"] = object["status"].clone();
                    }
                    applied
                }
                (None, false) => {
                    let created = state.create(key, patch);
                    drop(state);
                    self.changed.notify_waiters();
                    return axum::Json(created).into_response();
                }
            }
        } else {
            let Some(mut object) = existing else {
                return status(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{key:?} not found"),
                );
            };
            json_patch::merge(&mut object, &patch);
            object
        };
        // A deleted object whose last finalizer went is gone.
        let released = !updated["metadata"]["deletionTimestamp"].is_null()
            && updated["metadata"]["finalizers"]
                .as_array()
                .is_none_or(|f| f.is_empty());
        let result = if released {
            state.remove(key);
            updated
        } else {
            state.put(key, updated, "MODIFIED")
        };
        drop(state);
        self.changed.notify_waiters();
        axum::Json(result).into_response()
    }
}
