//! `docs/openapi.yaml` against the real balancer: every admin route is documented
//! and every documented path is a route, every schema compiles as JSON Schema
//! 2020-12, and the answers of real requests (successes and each kind of error) match
//! the schema the document gives for their path, method and status.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::{free_port, poll, process_balancer, replicas, request, Reply, Service};
use serde_json::{json, Value};

/// The methods an OpenAPI path item may hold operations for.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

/// The balancer's route list, `(METHOD, path)`, read from the `admin_routes!` block
/// of `load_balancer/src/api.rs` (the e2e crate does not link the balancer).
fn admin_routes() -> BTreeSet<(String, String)> {
    let source = std::fs::read_to_string(repo_file("load_balancer/src/api.rs"))
        .expect("load_balancer/src/api.rs");
    let block = source
        .split_once("admin_routes! {")
        .expect("an admin_routes! { ... } block in api.rs")
        .1;
    let routes: BTreeSet<_> = block
        .lines()
        .map(str::trim)
        .take_while(|l| *l != "}")
        .filter(|l| !l.is_empty() && !l.starts_with("//"))
        .map(|line| {
            let mut words = line.split_whitespace();
            let method = words.next().expect("a method");
            let path = words
                .next()
                .and_then(|p| p.strip_prefix('"')?.strip_suffix('"'))
                .unwrap_or_else(|| panic!("a quoted path in {line:?}"));
            (method.to_string(), path.to_string())
        })
        .collect();
    assert!(routes.len() >= 10, "too few routes parsed: {routes:?}");
    routes
}

/// `docs/openapi.yaml`, as JSON.
struct Doc(Value);

impl Doc {
    fn load() -> Doc {
        let text =
            std::fs::read_to_string(repo_file("docs/openapi.yaml")).expect("docs/openapi.yaml");
        let doc: Value =
            serde_norway::from_str(&text).unwrap_or_else(|e| panic!("docs/openapi.yaml: {e}"));
        assert_eq!(doc["openapi"].as_str().map(|v| &v[..4]), Some("3.1."));
        Doc(doc)
    }

    /// Every documented operation, `(METHOD, path)`.
    fn operations(&self) -> BTreeSet<(String, String)> {
        let paths = self.0["paths"].as_object().expect("paths");
        paths
            .iter()
            .flat_map(|(path, item)| {
                METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(move |m| (m.to_uppercase(), path.clone()))
            })
            .collect()
    }

    /// Follows a local `$ref` (`#/components/...`) to what it names.
    fn resolve<'a>(&'a self, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let pointer = r.strip_prefix('#').expect("a local $ref");
                self.resolve(self.0.pointer(pointer).unwrap_or_else(|| panic!("{r}")))
            }
            None => v,
        }
    }

    fn operation(&self, method: &str, template: &str) -> &Value {
        self.0["paths"]
            .get(template)
            .and_then(|item| item.get(method.to_lowercase()))
            .unwrap_or_else(|| panic!("{method} {template} is not documented"))
    }

    /// A validator for `schema`, whose `#/components/...` references resolve against
    /// the document's components.
    fn validator(&self, schema: &Value) -> Result<jsonschema::Validator, String> {
        let mut root = match schema {
            Value::Object(_) => schema.clone(),
            // `true` / `false` schemas.
            other => json!({ "allOf": [other] }),
        };
        root["components"] = self.0["components"].clone();
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .build(&root)
            .map_err(|e| e.to_string())
    }

    /// Validates `instance` against `schema`; panics with `what` and every message.
    fn validate(&self, what: &str, schema: &Value, instance: &Value) {
        let validator = self
            .validator(schema)
            .unwrap_or_else(|e| panic!("{what}: the documented schema does not compile: {e}"));
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("  at {:?}: {e}", e.instance_path().to_string()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match its documented schema:\n{}\nbody: {instance}",
            errors.join("\n")
        );
    }

    /// Validates `instance` against `components.schemas.<name>`.
    fn validate_component(&self, what: &str, name: &str, instance: &Value) {
        let schema = json!({ "$ref": format!("#/components/schemas/{name}") });
        self.validate(what, &schema, instance);
    }

    /// Checks a request body we send against the documented request schema.
    fn check_request(&self, method: &str, template: &str, body: &str) {
        let op = self.operation(method, template);
        let schema = op["requestBody"]["content"]["application/json"]
            .get("schema")
            .unwrap_or_else(|| panic!("{method} {template} documents no JSON request body"));
        let body: Value = serde_json::from_str(body).expect("a JSON request body");
        self.validate(
            &format!("the request body of {method} {template}"),
            self.resolve(schema),
            &body,
        );
    }

    /// Checks an answer against the document: its status is listed for the operation,
    /// its content type is one documented for that status, required headers are there
    /// and match their schemas, and a JSON body matches its schema. Returns the body
    /// as JSON (`null` when it is not JSON).
    fn check(&self, method: &str, template: &str, path: &str, reply: &Reply) -> Value {
        let what = format!("{method} {path} -> {}", reply.status);
        let op = self.operation(method, template);
        let response = op["responses"]
            .get(reply.status.to_string())
            .map(|r| self.resolve(r))
            .unwrap_or_else(|| {
                panic!(
                    "{what}: status {} is not documented for {method} {template}; body: {}",
                    reply.status, reply.body
                )
            });
        if let Some(headers) = response.get("headers").and_then(Value::as_object) {
            for (name, header) in headers {
                let header = self.resolve(header);
                match reply.header(name) {
                    Some(v) => self.validate(
                        &format!("{what}: header {name}"),
                        &header["schema"],
                        &json!(v),
                    ),
                    None => assert!(
                        header["required"] != true,
                        "{what}: the documented header {name} is missing"
                    ),
                }
            }
        }
        let Some(content) = response.get("content").and_then(Value::as_object) else {
            assert!(
                reply.body.is_empty(),
                "{what}: a body where none is documented"
            );
            return Value::Null;
        };
        let given = reply.header("content-type").unwrap_or("");
        let essence = given.split(';').next().unwrap_or("").trim().to_lowercase();
        let media = content.get(&essence).unwrap_or_else(|| {
            panic!(
                "{what}: content type {given:?} is not documented (documented: {:?}); body: {}",
                content.keys().collect::<Vec<_>>(),
                reply.body
            )
        });
        if essence != "application/json" {
            return Value::Null;
        }
        let body: Value = serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", reply.body));
        let schema = media
            .get("schema")
            .unwrap_or_else(|| panic!("{what}: no schema documented"));
        self.validate(&what, schema, &body);
        body
    }
}

/// Where requests go: a balancer's public or admin address, with or without headers.
struct Client<'a> {
    doc: &'a Doc,
    base: String,
    headers: Vec<(&'a str, &'a str)>,
}

impl<'a> Client<'a> {
    fn new(doc: &'a Doc, lb: &Service) -> Self {
        Client {
            doc,
            base: lb.base.clone(),
            headers: vec![],
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<&str>) -> Reply {
        request(
            method,
            &format!("{}{path}", self.base),
            &self.headers,
            body.map(str::as_bytes),
        )
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// Sends a request to the route `template` (at `path`), expects `status`, and
    /// checks the answer against the document; returns its JSON body.
    fn expect(
        &self,
        method: &str,
        template: &str,
        path: &str,
        body: Option<&str>,
        status: u16,
    ) -> Value {
        if let (Some(b), 200..=299) = (body, status) {
            self.doc.check_request(method, template, b);
        }
        let reply = self.send(method, path, body);
        assert_eq!(
            reply.status, status,
            "{method} {path} with {body:?}: {}",
            reply.body
        );
        self.doc.check(method, template, path, &reply)
    }

    /// `expect` where the concrete path is the template.
    fn at(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> Value {
        self.expect(method, path, path, body, status)
    }
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

#[test]
fn every_admin_route_is_documented_and_every_documented_path_is_an_admin_route() {
    let doc = Doc::load();
    let routes = admin_routes();
    let documented = doc.operations();
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty(),
        "admin routes missing from docs/openapi.yaml: {undocumented:?}"
    );
    assert!(
        unknown.is_empty(),
        "docs/openapi.yaml documents operations the balancer does not route: {unknown:?}"
    );
}

#[test]
fn every_schema_in_the_document_compiles_as_json_schema_2020_12() {
    let doc = Doc::load();
    let schemas = doc.0["components"]["schemas"].as_object().expect("schemas");
    for name in schemas.keys() {
        let r = json!({ "$ref": format!("#/components/schemas/{name}") });
        doc.validator(&r)
            .unwrap_or_else(|e| panic!("components.schemas.{name}: {e}"));
    }
    let mut checked = 0;
    for (method, path) in doc.operations() {
        let op = doc.operation(&method, &path);
        let bodies = op["requestBody"]["content"]
            .as_object()
            .into_iter()
            .flatten();
        let answers = op["responses"]
            .as_object()
            .expect("responses")
            .values()
            .flat_map(|r| doc.resolve(r)["content"].as_object().into_iter().flatten());
        for (media, content) in bodies.chain(answers) {
            let schema = content
                .get("schema")
                .unwrap_or_else(|| panic!("{method} {path} {media}: no schema"));
            doc.validator(schema)
                .unwrap_or_else(|e| panic!("{method} {path} {media}: {e}"));
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} schemas found");
}

#[test]
fn the_replica_set_endpoints_and_forwarding_answer_as_documented() {
    let doc = Doc::load();
    let lb = process_balancer(&["--grpc-listen", "127.0.0.1:0"]);
    let c = Client::new(&doc, &lb);

    let rep = c.at("GET", "/rep", None, 200);
    assert_eq!(rep["message"]["N"], 3);
    let status = c.at("GET", "/status", None, 200);
    assert_eq!(status["message"]["runtime"], "process");
    assert_eq!(status["message"]["hash"], "quadratic");

    let metrics = c.send("GET", "/metrics", None);
    doc.check("GET", "/metrics", "/metrics", &metrics);
    assert!(
        metrics.header("content-type") == Some("text/plain; version=0.0.4"),
        "{:?}",
        metrics.headers
    );
    assert!(
        metrics.body.contains("lb_retries_total"),
        "{}",
        metrics.body
    );

    let added = c.at(
        "POST",
        "/add",
        Some(r#"{"n": 1, "hostnames": ["S4"]}"#),
        200,
    );
    assert_eq!(added["message"]["N"], 4);
    assert!(added["message"]["replicas"]
        .as_array()
        .unwrap()
        .contains(&json!("S4")));
    let status = c.at("GET", "/status", None, 200);
    assert_eq!(status["message"]["N"], 4);

    for (body, status, says) in [
        ("{", 400, "not valid JSON"),
        ("[1]", 400, "must be a JSON object"),
        (r#"{"hostnames": []}"#, 400, "Field 'n' is missing"),
        (r#"{"n": 0}"#, 400, "must be a positive integer"),
        (r#"{"n": "2"}"#, 400, "must be a positive integer"),
        (
            r#"{"n": 1, "hostnames": "S5"}"#,
            400,
            "must be a list of strings",
        ),
        (
            r#"{"n": 1, "hostnames": ["S5", "S6"]}"#,
            400,
            "<Error> Length of hostname list is more than newly added instances",
        ),
        (
            r#"{"n": 2, "hostnames": ["S5", "S5"]}"#,
            400,
            "is given twice",
        ),
        (r#"{"n": 1, "hostnames": ["-bad"]}"#, 400, "is not valid"),
        (r#"{"n": 56}"#, 400, "Cannot add 56 replicas"),
        (
            r#"{"n": 1, "hostnames": ["Server1"]}"#,
            409,
            "already in use",
        ),
    ] {
        let v = c.at("POST", "/add", Some(body), status);
        assert!(message(&v).contains(says), "{body}: {v}");
    }
    let huge = format!(r#"{{"n": 1, "pad": "{}"}}"#, "x".repeat(70 * 1024));
    let v = c.at("POST", "/add", Some(&huge), 413);
    assert_eq!(
        message(&v),
        "<Error> Request body is larger than 65536 bytes"
    );

    for (body, says) in [
        (
            r#"{"n": 1, "hostnames": ["S4", "Server1"]}"#,
            "<Error> Length of hostname list is more than removable instances",
        ),
        (r#"{"n": 1, "hostnames": ["Nope"]}"#, "is not a replica"),
        (r#"{"n": 99}"#, "Cannot remove 99 replicas"),
        ("nope", "not valid JSON"),
    ] {
        let v = c.at("DELETE", "/rm", Some(body), 400);
        assert!(message(&v).contains(says), "{body}: {v}");
    }
    let removed = c.at(
        "DELETE",
        "/rm",
        Some(r#"{"n": 1, "hostnames": ["S4"]}"#),
        200,
    );
    assert_eq!(removed["message"]["N"], 3);

    // Everything else goes to a replica; a path no replica has is the documented 400.
    let home = c.send("GET", "/home", None);
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.header("x-served-by").is_some(), "{:?}", home.headers);
    let missing = c.send("GET", "/nope", None);
    assert_eq!(missing.status, 400, "{}", missing.body);
    doc.validate_component("GET /nope (forwarded)", "Failure", &missing.json());
    assert_eq!(
        message(&missing.json()),
        "<Error> '/nope' endpoint does not exist in server replicas"
    );
    // A listed path with another method is forwarded too.
    let other = c.send("POST", "/rep", Some("{}"));
    assert_eq!(other.status, 400, "{}", other.body);
    doc.validate_component("POST /rep (forwarded)", "Failure", &other.json());
}

#[test]
fn the_policy_and_ring_endpoints_answer_as_documented() {
    let doc = Doc::load();
    let lb = process_balancer(&["--grpc-listen", "127.0.0.1:0"]);
    let c = Client::new(&doc, &lb);

    let policy = c.at("GET", "/policy", None, 200);
    assert_eq!(policy["message"]["policy"], "quadratic");
    // The view sent back as it is changes nothing.
    let same = c.at("PUT", "/policy", Some(&policy["message"].to_string()), 200);
    assert_eq!(same["message"], policy["message"]);

    let ring = c.at("GET", "/ring", None, 200);
    assert_eq!(ring["message"]["kind"], "ring", "{ring}");
    assert_eq!(ring["message"]["slots"], 512);
    assert_eq!(ring["message"]["vnodes"].as_array().unwrap().len(), 27);
    assert_eq!(ring["message"]["owners"].as_array().unwrap().len(), 512);
    let lookup = c.expect("GET", "/ring", "/ring?key=123456", None, 200);
    assert_eq!(lookup["message"]["request_id"], 123456, "{lookup}");
    assert_eq!(lookup["message"]["candidates"].as_array().unwrap().len(), 3);
    assert!(lookup["message"]["slot"].is_u64(), "{lookup}");
    let named = c.expect("GET", "/ring", "/ring?key=user-42", None, 200);
    assert_eq!(named["message"]["key"], "user-42");
    c.expect("GET", "/ring", "/ring?key=", None, 400);
    let long = format!("/ring?key={}", "k".repeat(257));
    c.expect("GET", "/ring", &long, None, 400);

    for (name, kind) in [
        ("maglev", "maglev"),
        ("rendezvous", "rendezvous"),
        ("mixed", "ring"),
        ("round-robin", "none"),
    ] {
        let body = json!({ "policy": name }).to_string();
        let v = c.at("PUT", "/policy", Some(&body), 200);
        assert_eq!(v["message"]["policy"], name);
        let ring = c.at("GET", "/ring", None, 200);
        assert_eq!(ring["message"]["kind"], kind, "{name}: {ring}");
        let lookup = c.expect("GET", "/ring", "/ring?key=abc", None, 200);
        assert_eq!(lookup["message"]["policy"], name, "{lookup}");
        let status = c.at("GET", "/status", None, 200);
        assert_eq!(status["message"]["policy"], name);
    }

    let tuned = c.at(
        "PUT",
        "/policy",
        Some(r#"{"policy": "quadratic", "hash_key": "header:X-User", "balance_factor": 1.25, "slow_start": "10s", "hedge": "p95", "hedge_budget": 2}"#),
        200,
    );
    assert_eq!(tuned["message"]["hash_key"], "header:x-user");
    assert_eq!(tuned["message"]["hedge"], "p95");
    c.at(
        "PUT",
        "/policy",
        Some(
            r#"{"hash_key": "random", "balance_factor": null, "slow_start": null, "hedge": null}"#,
        ),
        200,
    );
    for (body, says) in [
        ("nope", "Invalid JSON body"),
        ("[]", "must be a JSON object"),
        (r#"{"policy": "nope"}"#, "unknown policy 'nope'"),
        (r#"{"bogus": 1}"#, "Unknown field 'bogus'"),
        (r#"{"policy": 3}"#, "'policy' must be a string"),
        (
            r#"{"balance_factor": 0.5}"#,
            "'balance_factor' must be a number >= 1",
        ),
        (r#"{"hedge": "soon"}"#, "hedge 'soon'"),
        (r#"{"policies": []}"#, "cannot be changed"),
    ] {
        let v = c.at("PUT", "/policy", Some(body), 400);
        assert!(message(&v).contains(says), "{body}: {v}");
    }
    let after = c.at("GET", "/policy", None, 200);
    assert_eq!(after["message"]["policy"], "quadratic");
}

#[test]
fn registration_and_replica_controls_answer_as_documented() {
    let doc = Doc::load();
    let lb = process_balancer(&["--grpc-listen", "127.0.0.1:0"]);
    let c = Client::new(&doc, &lb);
    let address = replicas(&lb)
        .into_iter()
        .find(|r| r["hostname"] == "Server1")
        .and_then(|r| r["address"].as_str().map(str::to_string))
        .expect("Server1's address");

    // A backend registered over HTTP, here at Server1's address under another name.
    let body = json!({"name": "web1", "address": address, "ttl_s": 30}).to_string();
    let r = c.at("POST", "/register", Some(&body), 200);
    assert_eq!(r["message"]["name"], "web1");
    assert_eq!(r["message"]["http_address"], address.as_str());
    c.at("POST", "/register", Some(&body), 200);
    let status = c.at("GET", "/status", None, 200);
    assert_eq!(status["message"]["N"], 4);
    let web1 = status["message"]["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hostname"] == "web1")
        .cloned()
        .expect("web1 in /status");
    assert_eq!(web1["source"], "registered");
    assert_eq!(c.at("GET", "/rep", None, 200)["message"]["N"], 3);
    let taken = json!({"name": "Server1", "address": address}).to_string();
    c.at("POST", "/register", Some(&taken), 409);
    for bad in [
        "nope".to_string(),
        r#"{"name": "web2"}"#.to_string(),
        json!({"name": "web2", "address": "nowhere"}).to_string(),
        json!({"name": "web 2", "address": address}).to_string(),
        json!({"name": "web2", "address": address, "ttl_s": 0}).to_string(),
        json!({"name": "web2", "address": address, "ttl": 5}).to_string(),
    ] {
        c.at("POST", "/register", Some(&bad), 400);
    }
    let gone = c.at("DELETE", "/register", Some(r#"{"name": "web1"}"#), 200);
    assert_eq!(gone["message"], json!({"name": "web1"}));
    let v = c.at("DELETE", "/register", Some(r#"{"name": "web1"}"#), 404);
    assert!(
        message(&v).contains("no backend registered as 'web1'"),
        "{v}"
    );
    c.at("DELETE", "/register", Some(r#"{"name": 1}"#), 400);

    // Replica controls.
    let name = |action: &str| format!("/replicas/{{name}}/{action}");
    let v = c.expect(
        "POST",
        &name("disable"),
        "/replicas/Server2/disable",
        None,
        200,
    );
    assert_eq!(v["message"]["state"], "disabled");
    c.at("GET", "/status", None, 200);
    let v = c.expect(
        "POST",
        &name("enable"),
        "/replicas/Server2/enable",
        None,
        200,
    );
    assert_eq!(v["message"]["hostname"], "Server2");
    let control = name("control");
    let v = c.expect("GET", &control, "/replicas/Server2/control", None, 200);
    assert_eq!(v["message"]["delay_ms"], 0);
    let v = c.expect(
        "POST",
        &control,
        "/replicas/Server2/control",
        Some(r#"{"delay_ms": 5, "fail_percent": 0, "weight": 3, "capacity": "cpu=2"}"#),
        200,
    );
    assert_eq!(v["message"]["weight"], 3);
    let v = c.expect(
        "GET",
        &control,
        "/replicas/Server2/control?set_delay_ms=0",
        None,
        200,
    );
    assert_eq!(v["message"]["delay_ms"], 0);
    // The replica's own refusals, relayed.
    c.expect(
        "POST",
        &control,
        "/replicas/Server2/control",
        Some(r#"{"fail_percent": 200}"#),
        400,
    );
    c.expect(
        "GET",
        &control,
        "/replicas/Server2/control?set_delay_ms=x",
        None,
        400,
    );
    for (method, action) in [
        ("POST", "disable"),
        ("POST", "enable"),
        ("GET", "control"),
        ("POST", "control"),
    ] {
        let v = c.expect(
            method,
            &name(action),
            &format!("/replicas/Nope/{action}"),
            None,
            404,
        );
        assert_eq!(message(&v), "<Error> Unknown replica 'Nope'");
    }
}

#[test]
fn with_an_admin_token_and_address_calls_that_change_something_get_the_documented_401_and_403() {
    let doc = Doc::load();
    let admin_port = free_port();
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let lb = process_balancer(&[
        "--replicas",
        "1",
        "--grpc-listen",
        "127.0.0.1:0",
        "--admin-token",
        "s3cret",
        "--admin-listen",
        &admin_addr,
    ]);
    let public = Client::new(&doc, &lb);
    let admin = Client {
        doc: &doc,
        base: format!("http://{admin_addr}"),
        headers: vec![],
    };
    let concrete = |path: &str| path.replace("{name}", "Server1");
    let mutating: Vec<_> = admin_routes()
        .into_iter()
        .filter(|(m, _)| m != "GET")
        .collect();
    assert!(mutating.len() >= 8, "{mutating:?}");
    let wrong = Client {
        doc: &doc,
        base: admin.base.clone(),
        headers: vec![("authorization", "Bearer s3cre")],
    };
    for (method, template) in &mutating {
        let path = concrete(template);
        let v = public.expect(method, template, &path, Some("{}"), 403);
        assert_eq!(
            message(&v),
            format!("<Error> {path} is served on the admin address only")
        );
        let v = admin.expect(method, template, &path, Some("{}"), 401);
        assert_eq!(message(&v), "<Error> Missing or wrong admin token");
        wrong.expect(method, template, &path, Some("{}"), 401);
    }
    // A control read with a query string changes something too.
    let control = "/replicas/{name}/control";
    public.expect(
        "GET",
        control,
        "/replicas/Server1/control?set_delay_ms=0",
        None,
        401,
    );
    // The admin address forwards nothing.
    let home = admin.send("GET", "/home", None);
    assert_eq!(home.status, 400, "{}", home.body);
    doc.validate_component("GET /home on the admin address", "Failure", &home.json());
    // Reads need neither, on either address.
    public.at("GET", "/rep", None, 200);
    admin.at("GET", "/policy", None, 200);
    admin.expect("GET", control, "/replicas/Server1/control", None, 200);
    // With the token, on the admin address, it is done.
    let authorized = Client {
        doc: &doc,
        base: admin.base.clone(),
        headers: vec![("authorization", "Bearer s3cret")],
    };
    let v = authorized.expect(
        "POST",
        "/replicas/{name}/disable",
        "/replicas/Server1/disable",
        None,
        200,
    );
    assert_eq!(v["message"]["state"], "disabled");
    authorized.expect(
        "POST",
        "/replicas/{name}/enable",
        "/replicas/Server1/enable",
        None,
        200,
    );
}

#[test]
fn the_load_test_endpoints_answer_as_documented() {
    let doc = Doc::load();
    let lb = process_balancer(&["--replicas", "2", "--grpc-listen", "127.0.0.1:0"]);
    let c = Client::new(&doc, &lb);

    let none = c.at("GET", "/loadtest", None, 200);
    assert_eq!(none["message"], Value::Null, "{none}");
    for bad in [
        "nope",
        r#"{"requests": 0}"#,
        r#"{"requests": 1000001}"#,
        r#"{"concurrency": 0}"#,
        r#"{"concurrency": 1001}"#,
        r#"{"duration_s": 0}"#,
        r#"{"duration_s": 301}"#,
        r#"{"path": "home"}"#,
        r#"{"path": "/a b"}"#,
        r#"{"path": "/rep"}"#,
        r#"{"mode": "soak"}"#,
        r#"{"bogus": 1}"#,
    ] {
        c.at("POST", "/loadtest", Some(bad), 400);
    }
    assert_eq!(c.at("GET", "/loadtest", None, 200)["message"], Value::Null);
    let v = c.at("DELETE", "/loadtest", None, 409);
    assert!(message(&v).starts_with("<Error> "), "{v}");

    let long = r#"{"requests": 1000000, "concurrency": 2, "duration_s": 60, "path": "/home", "mode": "load"}"#;
    let started = c.at("POST", "/loadtest", Some(long), 202);
    let id = started["message"]["id"].as_u64().expect("an id");
    assert_eq!(started["message"]["state"], "running", "{started}");
    let v = c.at("POST", "/loadtest", Some(long), 409);
    assert_eq!(
        message(&v),
        format!("<Error> A load test is already running (id {id})")
    );
    poll("load test progress", Duration::from_secs(20), || {
        let v = c.at("GET", "/loadtest", None, 200);
        (v["message"]["completed"].as_u64() > Some(0)).then_some(())
    });
    let stopping = c.at("DELETE", "/loadtest", None, 200);
    assert_eq!(stopping["message"]["id"], id);
    let stopped = stop_and_wait(&c, id);
    assert!(
        !stopped["message"]["by_replica"]
            .as_object()
            .unwrap()
            .is_empty(),
        "{stopped}"
    );
    let v = c.at("DELETE", "/loadtest", None, 409);
    assert_eq!(message(&v), "<Error> No load test is running");

    // No body at all: the defaults.
    let defaults = c.send("POST", "/loadtest", None);
    assert_eq!(defaults.status, 202, "{}", defaults.body);
    let v = doc.check("POST", "/loadtest", "/loadtest", &defaults);
    assert_eq!(v["message"]["requests"], 10000, "{v}");
    assert_eq!(v["message"]["path"], "/home", "{v}");
    let id = v["message"]["id"].as_u64().expect("an id");
    c.at("DELETE", "/loadtest", None, 200);
    stop_and_wait(&c, id);

    let stress = r#"{"requests": 400, "concurrency": 4, "duration_s": 30, "path": "/home", "mode": "stress"}"#;
    c.at("POST", "/loadtest", Some(stress), 202);
    let done = poll("the stress test to finish", Duration::from_secs(40), || {
        let v = c.at("GET", "/loadtest", None, 200);
        (v["message"]["state"] != "running").then_some(v)
    });
    assert_eq!(done["message"]["state"], "done", "{done}");
    assert_eq!(done["message"]["mode"], "stress");
    assert!(
        !done["message"]["steps"].as_array().unwrap().is_empty(),
        "{done}"
    );
}

/// Waits until load test `id`, told to stop, reports `stopped`; returns `GET /loadtest`.
fn stop_and_wait(c: &Client<'_>, id: u64) -> Value {
    let v = poll("the load test to stop", Duration::from_secs(15), || {
        let v = c.at("GET", "/loadtest", None, 200);
        assert_eq!(v["message"]["id"], id, "{v}");
        (v["message"]["state"] != "running").then_some(v)
    });
    assert_eq!(v["message"]["state"], "stopped", "{v}");
    v
}

/// One server-sent event: its name (`message` when it has none), id and data.
#[derive(Debug)]
struct Event {
    name: String,
    id: Option<String>,
    data: String,
}

/// The start of `GET <target>` (`/events…`): the response head, and the stream's text (de-chunked)
/// up to and including the first `state` event.
fn first_events(base: &str, target: &str) -> (Reply, String) {
    let addr = base.strip_prefix("http://").expect("http");
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut raw = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        assert!(
            Instant::now() < deadline,
            "no state event within 15 s: {}",
            String::from_utf8_lossy(&raw)
        );
        match s.read(&mut buf) {
            Ok(0) => panic!("/events closed: {}", String::from_utf8_lossy(&raw)),
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("/events: {e}"),
        }
        let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&raw[..end]).to_string();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let reply = Reply {
            status,
            headers,
            body: String::new(),
        };
        let chunked = reply
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
        let body = if chunked {
            dechunk(&raw[end + 4..])
        } else {
            raw[end + 4..].to_vec()
        };
        let text = String::from_utf8_lossy(&body).replace("\r\n", "\n");
        if status != 200 || parse_events(&text).iter().any(|e| e.name == "state") {
            return (reply, text);
        }
    }
}

/// The data of the complete chunks of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
            .expect("a chunk size");
        if size == 0 || raw.len() < eol + 2 + size + 2 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    out
}

/// The complete events of an event stream's text; blocks with no data (a lone
/// `retry:`, comments) are not events.
fn parse_events(text: &str) -> Vec<Event> {
    let mut blocks: Vec<&str> = text.split("\n\n").collect();
    blocks.pop(); // Incomplete, or empty after the last blank line.
    blocks
        .into_iter()
        .filter_map(|block| {
            let mut event = Event {
                name: "message".into(),
                id: None,
                data: String::new(),
            };
            let mut data = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.name = value.to_string(),
                    "id" => event.id = Some(value.to_string()),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            event.data = data.join("\n");
            (!data.is_empty()).then_some(event)
        })
        .collect()
}

#[test]
fn the_dashboard_and_its_event_stream_answer_as_documented() {
    let doc = Doc::load();
    let lb = process_balancer(&["--replicas", "2", "--grpc-listen", "127.0.0.1:0"]);
    let c = Client::new(&doc, &lb);

    let page = c.send("GET", "/dashboard", None);
    assert_eq!(page.status, 200, "{}", page.body);
    doc.check("GET", "/dashboard", "/dashboard", &page);
    assert!(
        page.header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{:?}",
        page.headers
    );
    assert!(page.body.len() < 150 * 1024, "{} bytes", page.body.len());

    let (head, text) = first_events(&lb.base, "/events");
    doc.check("GET", "/events", "/events", &head);
    assert!(
        head.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{:?}",
        head.headers
    );
    assert!(text.starts_with("retry: 1000\n"), "{text}");
    let events = parse_events(&text);
    let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names.get(..2), Some(&["history", "state"][..]), "{text}");
    let described = &doc.operation("GET", "/events")["responses"]["200"]["content"]
        ["text/event-stream"]["x-sse-events"];
    for event in &events {
        let name = &event.name;
        let data: Value = serde_json::from_str(&event.data)
            .unwrap_or_else(|e| panic!("event {name}: data is not JSON ({e}): {}", event.data));
        let schema = described
            .get(name)
            .unwrap_or_else(|| panic!("event {name} is not documented"));
        doc.validate(&format!("GET /events: event {name}"), schema, &data);
        if name == "state" {
            let id = event.id.as_deref().expect("a state event has an id");
            assert_eq!(id, data["seq"].to_string(), "{}", event.data);
            assert_eq!(data["runtime"], "process");
            assert_eq!(data["auth_required"], false);
            assert_eq!(data["replicas"].as_array().unwrap().len(), 2);
        }
    }
    // A client that resumes gets only the samples it has not seen.
    let seen = events[1].id.clone().expect("an id");
    let (head, text) = first_events(&lb.base, &format!("/events?last_event_id={seen}"));
    doc.check("GET", "/events", "/events?last_event_id=", &head);
    let history = parse_events(&text)
        .into_iter()
        .find(|e| e.name == "history")
        .expect("a history event");
    let history: Value = serde_json::from_str(&history.data).expect("JSON");
    doc.validate_component("a resumed history", "History", &history);
    let seen: u64 = seen.parse().expect("a numeric id");
    for sample in history["samples"].as_array().unwrap() {
        assert!(sample["seq"].as_u64() > Some(seen), "{history}");
    }
}
