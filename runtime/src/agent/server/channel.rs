//! Kubernetes' remote-command channel protocol over a WebSocket, as
//! `kubectl exec` and client libraries speak it.
//!
//! Every WebSocket message is binary (text frames from clients are read
//! the same way) and starts with one byte naming its channel: 0 stdin,
//! 1 stdout, 2 stderr, 3 the error channel (one `Status` object at the end:
//! success, or the exit code as a `NonZeroExitCode` cause), 4 terminal
//! resize (`{"Width":W,"Height":H}` from the client). Version 5 adds a
//! close signal, a message `[255, channel]`, with which the client ends its
//! stdin (version 4 has no way to say so short of closing the socket).

use orch_core::ApiError;
use serde_json::{json, Value};

/// The channel protocols served, in the server's order of preference.
pub const PROTOCOLS: [&str; 2] = [V5, V4];

/// Version 5: version 4 plus the close signal.
pub const V5: &str = "v5.channel.k8s.io";

/// Version 4: a `Status` on the error channel, resize on channel 4.
pub const V4: &str = "v4.channel.k8s.io";

/// The process' stdin (client to server).
pub const STDIN: u8 = 0;
/// The process' stdout (or its terminal).
pub const STDOUT: u8 = 1;
/// The process' stderr.
pub const STDERR: u8 = 2;
/// The final `Status` (server to client).
pub const ERROR: u8 = 3;
/// Terminal size changes (client to server).
pub const RESIZE: u8 = 4;
/// Version 5's close signal: the next byte names the channel closed.
pub const CLOSE: u8 = 255;

/// The protocol to answer with: the first of the client's offers
/// (`Sec-WebSocket-Protocol`, comma separated, in its order of preference)
/// that is served.
pub fn negotiate(offered: &str) -> Option<&'static str> {
    offered
        .split(',')
        .map(str::trim)
        .find_map(|p| PROTOCOLS.iter().find(|served| **served == p).copied())
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Bytes for the process' stdin.
    Stdin(&'a [u8]),
    /// The client's terminal has this many columns and rows.
    Resize {
        /// Columns.
        width: u16,
        /// Rows.
        height: u16,
    },
    /// The client closed one of its channels (version 5).
    Close(u8),
    /// An empty message, or one for a channel the client does not write.
    Ignored,
}

/// Why a client message cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// A resize message that is not `{"Width":W,"Height":H}`.
    #[error("invalid resize message {0:?}")]
    Resize(String),
    /// A close signal without the channel it closes.
    #[error("close signal without a channel")]
    Close,
}

/// Reads one message of the client.
pub fn decode(message: &[u8]) -> Result<Inbound<'_>, ChannelError> {
    let Some((&channel, data)) = message.split_first() else {
        return Ok(Inbound::Ignored);
    };
    match channel {
        STDIN => Ok(Inbound::Stdin(data)),
        RESIZE => {
            #[derive(serde::Deserialize)]
            #[serde(rename_all = "PascalCase")]
            struct Size {
                width: u16,
                height: u16,
            }
            let size: Size = serde_json::from_slice(data)
                .map_err(|_| ChannelError::Resize(String::from_utf8_lossy(data).into_owned()))?;
            Ok(Inbound::Resize {
                width: size.width,
                height: size.height,
            })
        }
        CLOSE => data
            .first()
            .map(|c| Inbound::Close(*c))
            .ok_or(ChannelError::Close),
        _ => Ok(Inbound::Ignored),
    }
}

/// A message for the client on `channel`.
pub fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(data.len() + 1);
    message.push(channel);
    message.extend_from_slice(data);
    message
}

/// The `Status` that ends a session whose command exited with `exit_code`,
/// as the kubelet writes it: success for 0, else `NonZeroExitCode` with the
/// code as an `ExitCode` cause (which kubectl turns into its own exit code).
pub fn exit_status(exit_code: i32, argv: &[String]) -> Value {
    if exit_code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {exit_code}",
            argv.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": exit_code.to_string()}]},
    })
}

/// The `Status` that ends a session that could not run its command.
pub fn error_status(error: &ApiError) -> Value {
    error.to_status()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_offered_protocol_served_is_chosen() {
        assert_eq!(negotiate("v5.channel.k8s.io"), Some(V5));
        assert_eq!(negotiate("v4.channel.k8s.io, v5.channel.k8s.io"), Some(V4));
        assert_eq!(
            negotiate("base64.channel.k8s.io,v5.channel.k8s.io"),
            Some(V5)
        );
        assert_eq!(negotiate("channel.k8s.io"), None);
        assert_eq!(negotiate(""), None);
    }

    #[test]
    fn client_messages_are_decoded_by_channel() {
        assert_eq!(decode(b"\x00ls\n"), Ok(Inbound::Stdin(b"ls\n")));
        assert_eq!(
            decode(b"\x04{\"Width\":120,\"Height\":40}"),
            Ok(Inbound::Resize {
                width: 120,
                height: 40
            })
        );
        assert_eq!(decode(&[CLOSE, STDIN]), Ok(Inbound::Close(STDIN)));
        assert_eq!(decode(&[CLOSE]), Err(ChannelError::Close));
        assert!(matches!(
            decode(b"\x04{\"Width\":-1}"),
            Err(ChannelError::Resize(_))
        ));
        assert_eq!(decode(b""), Ok(Inbound::Ignored));
        assert_eq!(decode(b"\x01x"), Ok(Inbound::Ignored));
    }

    #[test]
    fn a_non_zero_exit_carries_its_code_as_a_cause() {
        assert_eq!(exit_status(0, &[])["status"], "Success");
        let failed = exit_status(3, &["sh".into(), "-c".into(), "exit 3".into()]);
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        assert_eq!(frame(ERROR, b"{}"), b"\x03{}");
    }
}
