//! `rewardrt serve` on loopback: every endpoint, concurrent clients, overload, bad input, graceful shutdown.
//! The server is the real binary; rewards are compared with `rewardrt score` on the same records.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{mpsc, Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

use crate::{bundled, fixture};

struct Server {
    child: Child,
    url: String,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    fn start(model: &std::path::Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rewardrt"))
            .args([
                "serve",
                "--model",
                model.to_str().unwrap(),
                "--port",
                "0",
                "--ep",
                "cpu",
                "--threads",
                "1",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let (log, pipe) = (Arc::clone(&stderr), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.split_whitespace().next().unwrap().to_owned());
                }
                log.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the server prints its address");
        let server = Server { child, url, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.get("/health").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "not ready: {}",
                server.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        server
    }

    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into()
    }

    fn get(&self, path: &str) -> (u16, String) {
        let mut r = Self::agent().get(format!("{}{path}", self.url)).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
    }

    fn post(&self, path: &str, body: &str) -> (u16, Value) {
        post(&self.url, path, body)
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(url: &str, path: &str, body: &str) -> (u16, Value) {
    let mut r = Server::agent()
        .post(format!("{url}{path}"))
        .header("content-type", "application/json")
        .send(body)
        .unwrap();
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// Rewards from `rewardrt score` for JSONL records.
fn cli_rewards(model: &std::path::Path, records: &[Value]) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rewardrt"))
        .args([
            "score",
            "--model",
            model.to_str().unwrap(),
            "--ep",
            "cpu",
            "--threads",
            "1",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let input: String = records.iter().map(|r| format!("{r}\n")).collect();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v.get("rewards").or_else(|| v.get("reward")).cloned().unwrap()
        })
        .collect()
}

fn close(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b)),
        _ => (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() <= 1e-5,
    }
}

fn arith(i: usize) -> Value {
    let (a, b) = (i % 13, (i * 7) % 13);
    json!({"prompt": format!("What is {a}+{b}?"), "response": format!("{}", a + b + i % 3)})
}

#[test]
fn every_endpoint_answers_like_rewardrt_score() {
    let server = Server::start(&bundled(), &[]);
    let (status, health) = server.get("/health");
    assert_eq!((status, health.contains("ready")), (200, true));
    let info: Value = serde_json::from_str(&server.get("/info").1).unwrap();
    assert_eq!(info["execution_provider"]["effective"], "CPU");
    assert_eq!(info["model"]["name"], "arith-rm");
    assert_eq!(info["limits"]["max_batch_size"], 64);

    let records = vec![
        json!({"prompt": "What is 2+2?", "response": "4"}),
        json!({"messages": [{"role": "user", "content": "What is 7*8?"}, {"role": "assistant", "content": "54"}]}),
        json!({"text": "<|user|>What is 9+1?<|assistant|>10<|end|>"}),
    ];
    let expected = cli_rewards(&bundled(), &records);
    let (status, got) = server.post("/score", &json!({"inputs": records}).to_string());
    assert_eq!(status, 200, "{got}");
    assert!(
        close(&got["rewards"], &Value::Array(expected.clone())),
        "{got} vs {expected:?}"
    );

    // OpenRLHF's remote reward model request: full texts under "query" (plus fields it also sends).
    let texts = [
        "<|user|>What is 2+2?<|assistant|>4<|end|>",
        "<|user|>What is 2+2?<|assistant|>5<|end|>",
    ];
    let openrlhf = json!({"query": texts, "prompts": ["What is 2+2?", "What is 2+2?"], "labels": ["", ""]});
    let (status, got) = server.post("/get_reward", &openrlhf.to_string());
    assert_eq!(status, 200, "{got}");
    let expected = cli_rewards(
        &bundled(),
        &texts.iter().map(|t| json!({"text": t})).collect::<Vec<_>>(),
    );
    assert!(close(&got["rewards"], &Value::Array(expected)), "{got}");
    assert_eq!(got["rewards"], got["scores"]);

    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    for name in [
        "rewardrt_requests_total{endpoint=\"/score\",status=\"200\"} 1",
        "rewardrt_records_total 5",
        "rewardrt_batch_size_count",
        "rewardrt_batch_padded_tokens_sum",
        "rewardrt_queue_depth 0",
        "rewardrt_request_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "{name} missing:\n{metrics}");
    }
}

#[test]
fn many_clients_get_exactly_their_own_rewards() {
    let server = Server::start(&bundled(), &["--max-wait-ms", "10", "--workers", "2"]);
    let all: Vec<Value> = (0..96).map(arith).collect();
    let expected = cli_rewards(&bundled(), &all);
    let url = server.url.clone();
    std::thread::scope(|scope| {
        for client in 0..16 {
            let (url, all, expected) = (&url, &all, &expected);
            scope.spawn(move || {
                for round in 0..4 {
                    // Each request: a different slice and size, so batches mix clients and lengths.
                    let picks: Vec<usize> = (0..1 + (client + round) % 5)
                        .map(|k| (client * 5 + round * 11 + k * 17) % 96)
                        .collect();
                    let inputs: Vec<&Value> = picks.iter().map(|&i| &all[i]).collect();
                    let (status, got) = post(url, "/score", &json!({"inputs": inputs}).to_string());
                    assert_eq!(status, 200, "{got}");
                    let want: Vec<Value> = picks.iter().map(|&i| expected[i].clone()).collect();
                    assert!(
                        close(&got["rewards"], &Value::Array(want.clone())),
                        "client {client}: {got} vs {want:?}"
                    );
                }
            });
        }
    });
    let metrics = server.get("/metrics").1;
    let batches = metric(&metrics, "rewardrt_batch_size_count");
    let records = metric(&metrics, "rewardrt_batch_size_sum");
    assert!(
        records / batches > 1.0,
        "requests were merged into batches: {records} records in {batches} batches"
    );
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics"))
}

#[test]
fn overload_is_answered_with_429_not_a_crash() {
    let server = Server::start(
        &bundled(),
        &[
            "--max-concurrent-requests",
            "2",
            "--max-queued-records",
            "6",
            "--max-wait-ms",
            "300",
            "--max-batch-size",
            "64",
        ],
    );
    let url = server.url.clone();
    let statuses: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..12)
            .map(|i| {
                let url = &url;
                scope.spawn(move || {
                    let inputs: Vec<Value> = (0..3).map(|k| arith(i * 3 + k)).collect();
                    post(url, "/score", &json!({"inputs": inputs}).to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    let busy: Vec<&Value> = statuses.iter().filter(|(s, _)| *s == 429).map(|(_, b)| b).collect();
    assert!(ok >= 1 && !busy.is_empty(), "{statuses:?}");
    assert_eq!(ok + busy.len(), 12, "only 200 or 429: {statuses:?}");
    assert!(
        busy.iter().all(|b| b["error"].as_str().unwrap().contains("--max-")),
        "{busy:?}"
    );
    // Still serving afterwards.
    let (status, _) = server.post("/score", &json!({"inputs": [arith(1)]}).to_string());
    assert_eq!(status, 200);
}

#[test]
fn bad_input_gets_the_right_status_and_names_the_record() {
    let server = Server::start(
        &bundled(),
        &["--max-records-per-request", "3", "--max-body-bytes", "2000"],
    );
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"inputs\": [".into(), 400, "malformed JSON"),
        ("{\"inputs\": 5}".into(), 422, "invalid type"),
        ("{\"query\": [1]}".into(), 422, "expected a string"),
        (json!({"inputs": [arith(1), {"prompt": "x"}]}).to_string(), 422, "inputs[1], field `response`: missing"),
        (json!({"inputs": [arith(1), {"text": "What is 1+1? ".repeat(30)}]}).to_string(), 422, "inputs[1]: 241 tokens exceed max_length 64"),
        (json!({"inputs": [arith(1), arith(2), arith(3), arith(4)]}).to_string(), 413, "4 records in one request exceed the limit of 3"),
        (json!({"inputs": [{"text": "x".repeat(3000)}]}).to_string(), 413, "length limit"),
        (json!({"inputs": [{"messages": [{"role": "system", "content": "hi"}, {"role": "assistant", "content": "x"}]}]}).to_string(), 422, "knows only user and assistant"),
    ];
    for (body, status, needle) in cases {
        let path = if body.contains("query") {
            "/get_reward"
        } else {
            "/score"
        };
        let (got, value) = server.post(path, &body);
        assert_eq!(got, status, "{body}: {value}");
        let text = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_owned);
        assert!(text.contains(needle), "{body}: {text}");
    }
    let (_, bad) = server.post("/score", &json!({"inputs": [arith(1), {"prompt": "x"}]}).to_string());
    assert_eq!(bad["index"], 1);
    // Per-request truncation: the long record is scored once the prompt may be cut.
    let long = json!({"prompt": "What is 3+4? ".repeat(9) + "What is 5+6?", "response": "11"});
    assert_eq!(server.post("/score", &json!({"inputs": [long]}).to_string()).0, 422);
    let (status, got) = server.post("/score", &json!({"inputs": [long], "truncation": "left"}).to_string());
    assert_eq!(status, 200, "{got}");
    let pytorch: Value = std::fs::read_to_string(fixture("truncation").join("arith-rm.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["id"] == "long-prompt")
        .unwrap();
    assert!(
        close(&got["rewards"][0], &pytorch["rewards"][0]),
        "{got} vs PyTorch {}",
        pytorch["rewards"]
    );
    assert_eq!(server.get("/health").0, 200, "still healthy");
}

#[test]
fn multi_label_models_return_arrays() {
    let server = Server::start(&fixture("tiny-llama-k3"), &[]);
    let records = vec![
        json!({"text": "Hello there"}),
        json!({"prompt": "What is", "response": " the capital?"}),
    ];
    let expected = cli_rewards(&fixture("tiny-llama-k3"), &records);
    let (status, got) = server.post("/score", &json!({"inputs": records}).to_string());
    assert_eq!(status, 200);
    assert_eq!(got["rewards"][0].as_array().map(Vec::len), Some(3));
    assert!(close(&got["rewards"], &Value::Array(expected)));
}

#[test]
fn shutdown_drains_in_flight_requests() {
    // Records wait up to 1.5 s for batch-mates, so the request is still in flight when SIGTERM arrives.
    let server = Server::start(&bundled(), &["--max-wait-ms", "1500"]);
    let url = server.url.clone();
    let request =
        std::thread::spawn(move || post(&url, "/score", &json!({"inputs": [arith(3), arith(4)]}).to_string()));
    std::thread::sleep(Duration::from_millis(300));
    let stderr = Arc::clone(&server.stderr);
    let status = server.terminate();
    let (code, body) = request.join().unwrap();
    assert_eq!(code, 200, "the in-flight request was answered: {body}");
    assert_eq!(body["rewards"].as_array().map(Vec::len), Some(2));
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        stderr.lock().unwrap().contains("stopped after draining"),
        "{}",
        stderr.lock().unwrap()
    );
}

#[test]
fn a_model_that_cannot_load_stops_the_server_with_its_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_rewardrt"))
        .args(["serve", "--model", "/nonexistent/model", "--port", "0", "--ep", "cpu"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listening on") && stderr.contains("not a directory"),
        "{stderr}"
    );
}

#[test]
fn a_request_larger_than_the_queue_is_413_not_a_permanent_429() {
    let server = Server::start(&bundled(), &["--max-queued-records", "2"]);
    let (status, body) = server.post("/score", &json!({"inputs": [arith(1), arith(2), arith(3)]}).to_string());
    assert_eq!(status, 413, "{body}");
    assert!(body["error"].as_str().unwrap().contains("queue capacity of 2"));
    assert_eq!(
        server
            .post("/score", &json!({"inputs": [arith(1), arith(2)]}).to_string())
            .0,
        200
    );
}

#[test]
fn a_client_that_disconnects_holds_its_queue_slots_until_its_records_are_dropped_unscored() {
    // Records wait 1.5 s for batch-mates, so the first request is still queued when its client goes away.
    let server = Server::start(&bundled(), &["--max-wait-ms", "1500", "--max-queued-records", "8"]);
    let body = json!({"inputs": (0..8).map(arith).collect::<Vec<_>>()}).to_string();
    let addr = server.url.trim_start_matches("http://").to_owned();
    let mut socket = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        socket,
        "POST /score HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let depth = || metric(&server.get("/metrics").1, "rewardrt_queue_depth");
    let deadline = Instant::now() + Duration::from_secs(30);
    while depth() < 8.0 {
        assert!(Instant::now() < deadline, "the 8 records were never queued");
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(socket);
    // Its slots come free once the dispatcher drops the records nobody waits for; none of them is scored.
    while depth() > 0.0 {
        assert!(Instant::now() < deadline, "the departed client's records stayed queued");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, got) = server.post("/score", &json!({"inputs": [arith(1)]}).to_string());
    assert_eq!(status, 200, "{got}");
    let metrics = server.get("/metrics").1;
    assert_eq!(metric(&metrics, "rewardrt_batch_size_sum"), 1.0, "{metrics}");
}
