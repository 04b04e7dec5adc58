//! Just enough of the PostgreSQL start-up exchange to refuse a client properly: answer its
//! SSLRequest / GSSENCRequest with 'N', read its StartupMessage, and send an ErrorResponse that
//! libpq and every driver show to the user. (The full protocol proxy replaces the byte relay.)

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
/// Start-up packets larger than this are not PostgreSQL (the server's own limit is 10000).
const MAX_STARTUP_LEN: u32 = 10_000;

/// Builds an ErrorResponse message ('E') with severity FATAL.
pub fn error_response(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len() + 32);
    for (field, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(field);
        // NUL would end the field early: the protocol has no escape for it.
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(b'E');
    out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// Reads the client's start-up (declining encryption) and answers with a FATAL error.
/// Gives up quietly on a client that sends nothing, or something that is not PostgreSQL.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    sqlstate: &str,
    message: &str,
) {
    let exchange = async {
        loop {
            let len = client.read_u32().await?;
            if !(8..=MAX_STARTUP_LEN).contains(&len) {
                return Ok::<bool, std::io::Error>(false);
            }
            let code = client.read_u32().await?;
            let mut rest = vec![0u8; len as usize - 8];
            client.read_exact(&mut rest).await?;
            match code {
                SSL_REQUEST | GSSENC_REQUEST => client.write_all(b"N").await?,
                CANCEL_REQUEST => return Ok(false),
                _ => return Ok(true),
            }
        }
    };
    if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(10), exchange).await {
        let _ = client.write_all(&error_response(sqlstate, message)).await;
        let _ = client.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_wire_format() {
        let m = error_response("08001", "no");
        assert_eq!(m[0], b'E');
        let len = u32::from_be_bytes([m[1], m[2], m[3], m[4]]) as usize;
        assert_eq!(len, m.len() - 1);
        assert_eq!(&m[5..], b"SFATAL\0VFATAL\0C08001\0Mno\0\0");
    }

    #[tokio::test]
    async fn ssl_request_is_declined_then_startup_refused() {
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { refuse(&mut agent, "08001", "down").await });
        client
            .write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
            .await
            .unwrap();
        let mut n = [0u8; 1];
        client.read_exact(&mut n).await.unwrap();
        assert_eq!(&n, b"N");
        let mut startup = vec![0, 0, 0, 0, 0, 3, 0, 0];
        startup.extend_from_slice(b"user\0u\0\0");
        let len = startup.len() as u32;
        startup[..4].copy_from_slice(&len.to_be_bytes());
        client.write_all(&startup).await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        task.await.unwrap();
        assert_eq!(reply, error_response("08001", "down"));
    }

    #[tokio::test]
    async fn garbage_gets_nothing() {
        let (mut client, mut agent) = tokio::io::duplex(4096);
        let task = tokio::spawn(async move { refuse(&mut agent, "08001", "down").await });
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        task.await.unwrap();
        assert!(reply.is_empty());
    }
}
