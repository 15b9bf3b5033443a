//! The script registry against a real Redis: EVALSHA, NOSCRIPT reload, timeouts, reconnect.

use std::time::Duration;

use keel_redis::{LuaScript, RedisHandle, RedisSettings};
use keel_testkit::RedisServer;

fn settings(server: &RedisServer) -> RedisSettings {
    RedisSettings {
        response_timeout: Duration::from_millis(300),
        ..RedisSettings::new(server.url())
    }
}

#[tokio::test]
async fn evalsha_reloads_after_script_flush_and_restart() {
    let mut server = RedisServer::start().expect("redis");
    let redis = RedisHandle::connect(&settings(&server))
        .await
        .expect("connect");
    let script = LuaScript::new("incr", "return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let mut conn = redis.connection();
    // Never loaded: the first call gets NOSCRIPT and loads it.
    let one: i64 = script
        .invoke(&mut conn, &["k"], &[1])
        .await
        .expect("first call");
    assert_eq!(one, 1);
    server.script_flush().expect("flush");
    let three: i64 = script
        .invoke(&mut conn, &["k"], &[2])
        .await
        .expect("after flush");
    assert_eq!(three, 3);

    // Redis restarts (no persistence): the connection comes back by itself and the script reloads.
    server.restart().expect("restart");
    let mut value = None;
    for _ in 0..50 {
        match script.invoke::<i64, _, _, _>(&mut conn, &["k"], &[5]).await {
            Ok(v) => {
                value = Some(v);
                break;
            }
            Err(error) => assert!(error.is_unavailable(), "unexpected error {error}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(value, Some(5));
}

#[tokio::test]
async fn a_stopped_redis_is_an_unavailable_error_within_the_timeout() {
    let mut server = RedisServer::start().expect("redis");
    let redis = RedisHandle::connect(&settings(&server))
        .await
        .expect("connect");
    server.stop();
    let started = std::time::Instant::now();
    let error = redis.ping().await.expect_err("redis is down");
    assert!(error.is_unavailable(), "{error}");
    assert!(started.elapsed() < Duration::from_secs(2));
    server.start_again().expect("start again");
    let mut ok = false;
    for _ in 0..50 {
        if redis.ping().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "handle did not reconnect");
}
