//! `--json` through the real binary: every document parses, carries `"version": 1`
//! and its command, matches its checked-in schema (docs/json/*.schema.json, with the
//! `jsonschema` crate), and says the values the run produced; human output without
//! `--json` is unchanged.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

const CS: usize = 65536;

/// The checked-in schema `docs/json/NAME.schema.json`.
fn schema(name: &str) -> jsonschema::Validator {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("docs/json")
        .join(format!("{name}.schema.json"));
    let text = std::fs::read_to_string(&path).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&v).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every line of `out` as JSON, each valid against schema `name`, with version 1.
fn docs(name: &str, out: &str) -> Vec<Value> {
    let s = schema(name);
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "no {name} JSON in {out:?}");
    for v in &lines {
        let errors: Vec<String> = s.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "{name} document does not match its schema: {errors:?}\n{v}"
        );
        assert_eq!(v["version"], 1, "{v}");
    }
    lines
}

fn one(name: &str, out: &str) -> Value {
    let mut v = docs(name, out);
    assert_eq!(v.len(), 1, "{out}");
    v.remove(0)
}

#[test]
fn a_schema_refuses_a_document_that_does_not_fit() {
    // The checks above could not fail if the schemas took anything.
    let s = schema("send");
    let good = serde_json::json!({"version":1,"command":"send","volume":"a","dest":"default",
        "session":null,"full":null,"previous":null,"changed_chunks":0,"bytes_read":0,
        "bytes_stored":0,"seconds":0.5});
    assert!(s.is_valid(&good));
    for (k, bad) in [
        ("version", serde_json::json!(2)),
        ("session", serde_json::json!("yesterday")),
        ("bytes_read", serde_json::json!(-1)),
        ("surprise", serde_json::json!(1)),
    ] {
        let mut v = good.clone();
        v[k] = bad;
        assert!(!s.is_valid(&v), "{k}: {v}");
    }
}

#[test]
fn every_archive_command_prints_json_that_matches_its_schema() {
    let env = Env::new(&["a", "b", "off"]);
    let ini = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("off = enable", "off = disable");
    std::fs::write(&env.config, ini).unwrap();
    let mut rng = Rng::new(5);
    std::fs::write(env.image("a"), rng.bytes(4 * CS)).unwrap();
    std::fs::write(env.image("b"), rng.bytes(2 * CS + 10)).unwrap();

    // send: one line per volume.
    let sent = docs("send", &env.ok(&["send", "--json"]));
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["volume"], "a");
    assert_eq!(sent[0]["full"], true);
    assert_eq!(sent[0]["changed_chunks"], 4);
    assert_eq!(sent[0]["bytes_read"], 4 * CS);
    assert_eq!(sent[1]["volume"], "b");
    let first = sent[0]["session"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.write_at("a", CS as u64 + 7, b"xyz");
    let again = one("send", &env.ok(&["send", "a", "--json"]));
    assert_eq!(again["full"], false);
    assert_eq!(again["previous"], first.as_str());
    assert_eq!(again["changed_chunks"], 1);
    let second = again["session"].as_str().unwrap().to_string();
    let none = one("send", &env.ok(&["send", "b", "--json"]));
    assert_eq!(none["session"], Value::Null);
    assert_eq!(none["changed_chunks"], 0);

    // list: one line per configured volume, disabled and never sent ones too.
    let list = docs("list", &env.ok(&["list", "--json"]));
    let names: Vec<&str> = list.iter().map(|v| v["volume"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "off"]);
    let a = &list[0]["sessions"];
    assert_eq!(a.as_array().unwrap().len(), 2);
    assert_eq!(a[0]["session"], first.as_str());
    assert_eq!(a[1]["previous"], first.as_str());
    assert_eq!(a[1]["changed"], 1);
    assert_eq!(list[2]["enabled"], false);
    assert_eq!(list[2]["sessions"].as_array().unwrap().len(), 0);
    // Without --json the human lines are as they were.
    let human = env.ok(&["list", "a"]);
    assert_eq!(human.lines().next(), Some("a"));
    assert!(human
        .lines()
        .nth(1)
        .unwrap()
        .starts_with(&format!("{first} size=")));

    // diff
    let d = one(
        "diff",
        &env.ok(&[
            "diff",
            "a",
            &format!("--session={first},{second}"),
            "--json",
        ]),
    );
    assert_eq!(d["command"], "diff");
    assert_eq!(d["changed_chunks"], 1);

    // receive
    let target = env.path().join("restored");
    let r = one(
        "receive",
        &env.ok(&[
            "receive",
            "a",
            &format!("--save-to={}", target.display()),
            "--json",
        ]),
    );
    assert_eq!(r["session"], second.as_str());
    assert_eq!(r["size"], 4 * CS);
    assert_same(&std::fs::read(&target).unwrap(), &env.read_image("a"), "a");

    // verify, clean
    let v = one("verify", &env.ok(&["verify", "a", "--json"]));
    assert_eq!(v["ok"], true);
    assert_eq!(v["session"], second.as_str());

    // prune --dry-run (with --auto's decisions), then for real.
    let dry = one(
        "prune",
        &env.ok(&["prune", "a", "--all-before=now", "--dry-run", "--json"]),
    );
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["removed"][0]["session"], first.as_str());
    assert_eq!(dry["removed"][0]["into"], second.as_str());
    let auto = one(
        "prune",
        &env.ok(&["prune", "a", "--keep=daily:1", "--dry-run", "--json"]),
    );
    let decisions = auto["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2, "{auto}");
    assert_eq!(decisions[1]["keep"], true);
    assert_eq!(env.sessions("a").len(), 2, "a dry run removes nothing");
    let real = docs("prune", &env.ok(&["prune", "--all-before=now", "--json"]));
    assert_eq!(real.len(), 2, "one line per enabled volume");
    assert_eq!(real[0]["removed"][0]["session"], first.as_str());
    assert_eq!(real[1]["removed"].as_array().unwrap().len(), 0);
    assert_eq!(env.sessions("a").len(), 1);

    // verify finding damage still prints its document, and fails.
    let chunk = find_chunk(&env.vol_dir("a"));
    std::fs::write(&chunk, b"garbage").unwrap();
    let o = env.run(&["verify", "a", "--json"]);
    assert!(!o.status.success());
    let v = one("verify", &String::from_utf8(o.stdout).unwrap());
    assert_eq!(v["ok"], false);
    assert!(!v["problems"].as_array().unwrap().is_empty());

    // status
    let o = env.run(&["status", "--json"]);
    assert!(!o.status.success());
    let st = one("status", &String::from_utf8(o.stdout).unwrap());
    assert_eq!(st["command"], "status");
    assert_eq!(
        st["volumes"][0]["destinations"][0]["last_verify"]["ok"],
        false
    );
}

/// Some chunk file of a volume's archive folder.
fn find_chunk(dir: &std::path::Path) -> PathBuf {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = e.file_name().into_string().unwrap();
            if p.is_dir() {
                stack.push(p);
            } else if name.starts_with('x') && name.len() > 8 {
                return p;
            }
        }
    }
    panic!("no chunk file under {}", dir.display());
}

#[test]
fn tape_commands_print_json_that_matches_their_schemas() {
    let dir = TestDir::new();
    let p = dir.path();
    let config = small_virtual_library(p);
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&config)
            .arg("-u")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let inv = one(
        "tape-inventory",
        &run(&["--dest=vt", "tape", "inventory", "--json"]),
    );
    assert_eq!(inv["slots"].as_array().unwrap().len(), 3);
    assert_eq!(inv["slots"][0]["barcode"], "VT0001L8");
    assert_eq!(inv["slots"][0]["tape"], Value::Null);
    run(&["--dest=vt", "tape", "label", "--all"]);
    let inv = one(
        "tape-inventory",
        &run(&["--dest=vt", "tape", "inventory", "--json"]),
    );
    assert_eq!(inv["slots"][0]["tape"]["pool"], "weekly");

    let sent = one("send", &run(&["--dest=vt", "send", "--json"]));
    assert_eq!(sent["dest"], "vt");
    assert_eq!(sent["full"], true);
    let id = sent["session"].as_str().unwrap().to_string();
    let list = one("list", &run(&["--dest=vt", "list", "--json"]));
    assert_eq!(list["sessions"][0]["session"], id.as_str());
    let v = one("verify", &run(&["--dest=vt", "verify", "v", "--json"]));
    assert_eq!(v["ok"], true);
    let target = p.join("out");
    let r = one(
        "receive",
        &run(&[
            "--dest=vt",
            "receive",
            "v",
            &format!("--save-to={}", target.display()),
            "--json",
        ]),
    );
    assert_eq!(r["session"], id.as_str());
    assert_same(
        &std::fs::read(&target).unwrap(),
        &std::fs::read(p.join("img/v")).unwrap(),
        "v",
    );
    // status knows the tape destination from the catalog, and its verify.
    let st = one("status", &run(&["status", "--json"]));
    let dests = st["volumes"][0]["destinations"].as_array().unwrap();
    let vt = dests.iter().find(|d| d["dest"] == "vt").unwrap();
    assert_eq!(vt["kind"], "tape");
    assert_eq!(vt["last_session"], id.as_str());
    assert_eq!(vt["last_verify"]["ok"], true);
    assert_eq!(vt["last_verify"]["session"], id.as_str());
    let dry = one(
        "prune",
        &run(&[
            "--dest=vt",
            "prune",
            "--all-before=now",
            "--dry-run",
            "--json",
        ]),
    );
    assert_eq!(dry["removed"][0]["session"], id.as_str());
}

#[test]
fn send_to_every_destination_prints_a_line_per_volume_and_destination() {
    let env = Env::new(&["a", "b"]);
    let mnt = env.path().join("usb");
    std::fs::create_dir(&mnt).unwrap();
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        "[volumes]",
        &format!(
            "[dest:far]\ndestdir = {}\n[dest:usb]\ndestmountpoint = {}\ndestdir = sb\n[volumes]",
            env.path().join("far").display(),
            mnt.display()
        ),
    );
    std::fs::write(&env.config, ini).unwrap();
    std::fs::write(env.image("a"), Rng::new(11).bytes(2 * CS)).unwrap();
    std::fs::write(env.image("b"), Rng::new(12).bytes(CS)).unwrap();
    let o = env.run(&["--dest=all", "send", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = docs("send", &String::from_utf8(o.stdout).unwrap());
    let got: Vec<(String, String)> = lines
        .iter()
        .map(|v| {
            (
                v["volume"].as_str().unwrap().to_string(),
                v["dest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = [
        ("a", "default"),
        ("b", "default"),
        ("a", "far"),
        ("b", "far"),
    ]
    .iter()
    .map(|(v, d)| (v.to_string(), d.to_string()))
    .collect();
    assert_eq!(got, want);
    // The absent one is said on stderr only.
    assert!(String::from_utf8_lossy(&o.stderr).contains("destination usb skipped"));
    // status sees all three, the absent one as absent.
    let st = one("status", &env.ok(&["status", "--json"]));
    let d = &st["volumes"][0]["destinations"];
    assert_eq!(d[1]["dest"], "far");
    assert_eq!(d[1]["sessions"], 1);
    assert_eq!(d[2]["dest"], "usb");
    assert_eq!(d[2]["sessions"], 0);
    assert!(d[2]["absent"]
        .as_str()
        .unwrap()
        .starts_with("disk not mounted"));
}

#[test]
fn stream_commands_print_json_that_matches_their_schemas() {
    let env = Env::new(&["a"]);
    std::fs::write(env.image("a"), Rng::new(13).bytes(3 * CS + 1)).unwrap();
    let stream = env.path().join("a.full");
    env.ok(&["send", "a", &format!("--stream={}", stream.display())]);
    let from = format!("--from-stream={}", stream.display());
    let v = one("verify", &env.ok(&["verify", &from, "--json"]));
    assert_eq!(v["volume"], "a");
    assert_eq!(v["dest"], Value::Null);
    assert_eq!(v["ok"], true);
    assert_eq!(v["chunks_checked"], 4);
    let target = env.path().join("restored");
    let r = one(
        "receive",
        &env.ok(&[
            "receive",
            &from,
            &format!("--save-to={}", target.display()),
            "--json",
        ]),
    );
    assert_eq!(r["session"], v["session"]);
    assert_eq!(r["size"], 3 * CS + 1);
    assert_same(&std::fs::read(&target).unwrap(), &env.read_image("a"), "a");
}
