//! The byte-exact exchanges of spec 4.5 and 6, shared by the tests of every module.

use super::base64;

pub const TOKEN_A: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJsb2dpbiI6ImthcmNobnUiLCJ1aWQiOjEwMDJ9.GnkyHuzPedHnropirz_AgZxD7DCUjou1uaiRujhBpCo";
pub const FID: &str = "0b6e3c1e-2f4d-4a7b-8c9d-112233445566";
pub const NOTES_SHA: &str = "ed40853ee78d1ad8c3df77e385ac07c7e258ce34fdbb8c9b5b05a6326e79ec29";
pub const NOTES_ID: &str = "e96bc64c-adca-5bcc-a054-20301277daef";
/// Unix time the transcripts are replayed at (vector A has no `exp`).
pub const NOW: i64 = 1_750_000_000;

/// `notes.txt`: 2,500 bytes, byte i = i mod 256.
pub fn notes() -> Vec<u8> {
    (0..2500u32).map(|i| i as u8).collect()
}

/// A frame in the current framing: LEN, UTYPE, JSON.
pub fn frame(utype: u8, json: &str) -> Vec<u8> {
    let mut f = ((json.len() + 1) as u32).to_be_bytes().to_vec();
    f.push(utype);
    f.extend_from_slice(json.as_bytes());
    f
}

pub fn transfer_json(n: usize) -> String {
    const CHUNKS: [&str; 3] = [
        "d85e0a50-7da3-591d-88ef-fd94e7421ed5",
        "ae972e88-9fac-5a70-85bf-4e8c43db00f7",
        "d86b6cad-0fe2-52df-b666-7796d2299707",
    ];
    let data = notes();
    let mut b64 = Vec::new();
    base64::encode_append(&data[n * 1000..(n * 1000 + 1000).min(2500)], &mut b64);
    format!(
        r#"{{"message-id":"1a2b3c4d-0000-4000-8000-00000000000{}","chunk":"{}","data":"{}","file":0,"n":{n}}}"#,
        n + 2,
        CHUNKS[n],
        String::from_utf8(b64).unwrap()
    )
}

/// Spec 4.5, client to server: AUTHENTICATION and three TRANSFERs.
pub fn client_frames_4_5() -> Vec<Vec<u8>> {
    let auth = format!(
        r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","token":"{TOKEN_A}","files":[{{"name":"notes.txt","size":2500,"sha256":"{NOTES_SHA}"}}],"fid":"{FID}","tags":["work","2024"]}}"#
    );
    let mut v = vec![frame(1, &auth)];
    for n in 0..3 {
        v.push(frame(3, &transfer_json(n)));
    }
    v
}

/// Spec 4.5, server to client: the four RESPONSEs.
pub fn server_frames_4_5() -> Vec<Vec<u8>> {
    vec![
        frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000001","response":"Ok","missing":[[0,0,3]],"chunk-size":1000,"window":32}"#,
        ),
        frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000002","response":"Ok"}"#,
        ),
        frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000003","response":"Ok"}"#,
        ),
        frame(
            2,
            &format!(
                r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000004","response":"Ok","complete":0,"id":"{NOTES_ID}"}}"#
            ),
        ),
    ]
}

/// Spec 6: QUERY and FETCH (client to server).
pub fn client_frames_6() -> Vec<Vec<u8>> {
    vec![
        frame(
            4,
            &format!(
                r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","token":"{TOKEN_A}","tags":["work"]}}"#
            ),
        ),
        frame(
            5,
            &format!(
                r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","token":"{TOKEN_A}","id":"{NOTES_ID}","offset":2496,"length":1000}}"#
            ),
        ),
    ]
}

/// Spec 6: the two replies.
pub fn server_frames_6() -> Vec<Vec<u8>> {
    vec![
        frame(
            2,
            &format!(
                r#"{{"message-id":"1a2b3c4d-0000-4000-8000-000000000005","response":"Ok","results":[{{"id":"{NOTES_ID}","name":"notes.txt","size":2500,"sha256":"{NOTES_SHA}","tags":["2024","work"]}}],"more":false}}"#
            ),
        ),
        frame(
            2,
            r#"{"message-id":"1a2b3c4d-0000-4000-8000-000000000006","response":"Ok","data":"wMHCww==","eof":true}"#,
        ),
    ]
}

#[test]
fn transcript_headers_are_those_of_the_spec() {
    let heads: Vec<[u8; 5]> = client_frames_4_5()
        .iter()
        .chain(server_frames_4_5().iter())
        .chain(client_frames_6().iter())
        .chain(server_frames_6().iter())
        .map(|f| f[..5].try_into().unwrap())
        .collect();
    assert_eq!(
        heads,
        [
            [0, 0, 0x01, 0x75, 1],
            [0, 0, 0x05, 0xb6, 3],
            [0, 0, 0x05, 0xb6, 3],
            [0, 0, 0x03, 0x1a, 3],
            [0, 0, 0, 0x78, 2],
            [0, 0, 0, 0x46, 2],
            [0, 0, 0, 0x46, 2],
            [0, 0, 0, 0x7f, 2],
            [0, 0, 0, 0xca, 4],
            [0, 0, 0x01, 0x02, 5],
            [0, 0, 0x01, 0x0f, 2],
            [0, 0, 0, 0x63, 2],
        ]
    );
    let t = &client_frames_4_5()[1];
    assert!(t[5..].ends_with(br#"5OXm5w==","file":0,"n":0}"#));
}
