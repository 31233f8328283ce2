//! Header handling of a reverse proxy: the host a request is for,
//! hop-by-hop headers (not forwarded), protocol upgrades and the
//! `X-Forwarded-*` headers.

use std::net::IpAddr;

use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, UPGRADE};
use hyper::Request;

/// Headers that concern one connection only (RFC 9110 §7.6.1, and the
/// older ones proxies still see).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// `X-Forwarded-For`: the addresses a request came through.
pub(crate) const X_FORWARDED_FOR: &str = "x-forwarded-for";
/// `X-Forwarded-Host`: the Host the client asked for.
pub(crate) const X_FORWARDED_HOST: &str = "x-forwarded-host";
/// `X-Forwarded-Proto`: the scheme the client used.
pub(crate) const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// The host (maybe with a port) a request is for: the authority of an
/// absolute-form target, else the `Host` header, else empty.
pub(crate) fn host_of<B>(req: &Request<B>) -> String {
    if let Some(authority) = req.uri().authority() {
        return authority
            .as_str()
            .rsplit('@')
            .next()
            .unwrap_or("")
            .to_string();
    }
    req.headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// The tokens of the `Connection` headers, lower case.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
}

/// The protocol a request (or a 101 answer) switches to: its `Upgrade`
/// header when `Connection` has the `upgrade` token.
pub(crate) fn upgrade_of(headers: &HeaderMap) -> Option<HeaderValue> {
    if !connection_tokens(headers).any(|t| t == "upgrade") {
        return None;
    }
    headers.get(UPGRADE).cloned()
}

/// Removes the hop-by-hop headers and those `Connection` names; keeps (or
/// puts back) `Connection: upgrade` and `Upgrade: upgrade` when given a
/// protocol to switch to.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: Option<&HeaderValue>) {
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
    }
}

/// Sets the `X-Forwarded-*` headers of a request from `client` for `host`
/// (the original Host) over `proto`: `X-Forwarded-For` gets `client`
/// appended to what earlier proxies put there, the others are replaced.
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: Option<&HeaderValue>,
    proto: &'static str,
) {
    let prior: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    let mut chain = prior.join(", ");
    if !chain.is_empty() {
        chain.push_str(", ");
    }
    chain.push_str(&client.to_string());
    if let Ok(value) = HeaderValue::from_str(&chain) {
        headers.insert(X_FORWARDED_FOR, value);
    }
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host.clone());
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, X-Secret"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers, None);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["x-kept"]);
    }

    #[test]
    fn upgrades_keep_their_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        let upgrade = upgrade_of(&headers);
        assert_eq!(upgrade.as_ref().unwrap(), "websocket");
        strip_hop_by_hop(&mut headers, upgrade.as_ref());
        assert_eq!(headers[CONNECTION], "upgrade");
        assert_eq!(headers[UPGRADE], "websocket");
        let mut plain = HeaderMap::new();
        plain.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(upgrade_of(&plain).is_none());
    }

    #[test]
    fn forwarded_for_is_appended_host_and_proto_replaced() {
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        headers.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        let host = HeaderValue::from_static("web.example.com:8080");
        set_forwarded(
            &mut headers,
            "10.0.0.9".parse().unwrap(),
            Some(&host),
            "http",
        );
        assert_eq!(headers[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(headers[X_FORWARDED_HOST], "web.example.com:8080");
        assert_eq!(headers[X_FORWARDED_PROTO], "http");
        assert_eq!(headers.get_all(X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn host_comes_from_an_absolute_target_or_the_host_header() {
        let req = Request::get("http://user@a.example.com:81/x")
            .header(HOST, "b.example.com")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req), "a.example.com:81");
        let req = Request::get("/x")
            .header(HOST, "b.example.com")
            .body(())
            .unwrap();
        assert_eq!(host_of(&req), "b.example.com");
        assert_eq!(host_of(&Request::get("/x").body(()).unwrap()), "");
    }
}
