//! Bearer tokens (`cairn tokens`): minted with a principal's secret through the real
//! CLI, taken by every realm of the master as that principal, refused once wrong,
//! revoked or expired, each refusal saying why.

use serde_json::{Value, json};

use cairn_test_support::harness::{Cluster, DEADLINE, guest, output_within_async, text};

use crate::CAIRN;
use crate::authn::{ALICE, BOB, authenticating_cluster};

/// Runs `cairn tokens ARGS` against the cluster as `who`; its stdout, or why it failed.
async fn cairn_tokens(
    cluster: &Cluster,
    who: (&str, &str),
    args: &[&str],
) -> Result<String, String> {
    let mut cmd = CAIRN.command();
    cmd.args([
        "tokens",
        "--master",
        &cluster.master_addr,
        "--principal",
        who.0,
    ])
    .args(args)
    .env("CAIRN_SECRET", who.1)
    .env_remove("CAIRN_TOKEN");
    let out = output_within_async(cmd, DEADLINE).await;
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_owned())
    } else {
        Err(text(&out.stderr))
    }
}

/// GET `path` with `Authorization: Bearer token`: status and body.
async fn get(cluster: &Cluster, path: &str, token: &str) -> (u16, String) {
    let r = reqwest::Client::new()
        .get(format!("http://{}{path}", cluster.master_addr))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_stands_for_its_principal_until_revoked_or_expired() {
    cairn_api::tls::install_default_provider();
    let cluster = authenticating_cluster().await;
    let token = cairn_tokens(
        &cluster,
        ALICE,
        &["create", "--ttl", "1h", "--description", "laptop"],
    )
    .await
    .unwrap();
    assert!(token.starts_with("cairn-"), "{token}");

    // Read-only and read-write realms take it, as alice.
    assert_eq!(get(&cluster, "/state", &token).await.0, 200);
    let (status, listed) = get(&cluster, "/api/v1/tokens", &token).await;
    assert_eq!(status, 200, "{listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let mine = listed["tokens"].as_array().unwrap();
    assert_eq!(mine.len(), 1, "{listed}");
    assert_eq!(mine[0]["principal"], "alice");
    assert_eq!(mine[0]["description"], "laptop");
    assert!(
        !listed.to_string().contains(&token[23..]),
        "never the secret"
    );
    // So does the scheduler API: the framework is alice's.
    let subscribe = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info":
        {"user": "nobody", "name": "by-token"}}});
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/scheduler", cluster.master_addr))
        .bearer_auth(&token)
        .header("Content-Type", "application/json")
        .body(subscribe.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let stream = r;

    // A wrong secret, another scheme's garbage: 401 saying why.
    let mut wrong = token.clone();
    let last = if wrong.pop() == Some('0') { '1' } else { '0' };
    wrong.push(last);
    let (status, why) = get(&cluster, "/state", &wrong).await;
    assert_eq!((status, why.trim()), (401, "the bearer token is wrong"));
    let (status, why) = get(&cluster, "/state", "not-a-token").await;
    assert_eq!(status, 401, "{why}");

    // A token cannot mint tokens; bob cannot see or revoke alice's.
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/tokens", cluster.master_addr))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "{}", r.text().await.unwrap());
    let id = mine[0]["id"].as_str().unwrap();
    assert_eq!(cairn_tokens(&cluster, BOB, &["ls"]).await.unwrap(), "");
    let refused = cairn_tokens(&cluster, BOB, &["revoke", id])
        .await
        .unwrap_err();
    assert!(refused.contains("404"), "{refused}");
    assert_eq!(get(&cluster, "/state", &token).await.0, 200);

    // Revoked: refused from the next call on, and the subscription it opened ends
    // with an ERROR saying why.
    cairn_tokens(&cluster, ALICE, &["revoke", id])
        .await
        .unwrap();
    let (status, why) = get(&cluster, "/state", &token).await;
    assert_eq!((status, why.trim()), (401, "the bearer token was revoked"));
    let rest = tokio::time::timeout(DEADLINE, stream.text())
        .await
        .expect("the subscription ended")
        .unwrap();
    assert!(rest.contains("\"type\":\"ERROR\""), "{rest}");
    assert!(rest.contains("was revoked"), "{rest}");

    // Expired: a token of a millisecond has expired by the time the CLI that minted
    // it has exited (a registry write and a process exit later).
    let short = cairn_tokens(&cluster, ALICE, &["create", "--ttl", "1ms"])
        .await
        .unwrap();
    let (status, why) = get(&cluster, "/state", &short).await;
    assert_eq!((status, why.trim()), (401, "the bearer token has expired"));
    // Without any credentials the CLI's call is refused with the master's reason.
    let mut cmd = CAIRN.command();
    cmd.args(["tokens", "--master", &cluster.master_addr, "ls"])
        .env_remove("CAIRN_TOKEN")
        .env_remove("CAIRN_PRINCIPAL");
    let out = output_within_async(cmd, DEADLINE).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
    cluster.assert_no_panics();
}

/// `cairn run` calls as a principal (HTTP Basic) or with a token, and without either
/// is refused with the master's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cairn_run_calls_as_its_principal_or_with_a_token() {
    let cluster = authenticating_cluster().await;
    let token = cairn_tokens(&cluster, ALICE, &["create"]).await.unwrap();
    let token_file = cluster.work_dir().join("alice.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let hello = guest("hello");
    let as_alice = ["--timeout", "30s", "--principal", ALICE.0];
    let by_token = [
        "--timeout",
        "30s",
        "--token-file",
        token_file.to_str().unwrap(),
    ];
    for (flags, secret) in [(&as_alice[..], Some(ALICE.1)), (&by_token[..], None)] {
        let mut cmd = cluster.run_command(&hello, flags, &["x"]);
        cmd.env_remove("CAIRN_TOKEN").env_remove("CAIRN_PRINCIPAL");
        if let Some(secret) = secret {
            cmd.env("CAIRN_SECRET", secret);
        }
        let out = output_within_async(cmd, DEADLINE).await;
        assert!(out.status.success(), "{flags:?}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("args: x"),
            "{}",
            text(&out.stdout)
        );
    }
    let mut cmd = cluster.run_command(&hello, &["--timeout", "30s"], &["x"]);
    cmd.env_remove("CAIRN_TOKEN").env_remove("CAIRN_PRINCIPAL");
    let out = output_within_async(cmd, DEADLINE).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("needs credentials"),
        "{}",
        text(&out.stderr)
    );
    cluster.assert_no_panics();
}
