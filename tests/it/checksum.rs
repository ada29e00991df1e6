//! EIP-55: wherever an address is accepted (challenge, gate, NFT verify), mixed case must be a
//! valid checksum; all-lowercase and all-uppercase carry no checksum and are accepted.

use serde_json::json;

use crate::{
    auth::{assert_refused, nft_verify, put_gate},
    chain::{dead_rpc_url, ALICE, BOB, CHAIN_ID},
    server::{make_clip, TestServer},
};

/// `address` with the case of its first hex letter flipped: still mixed case, no longer valid.
fn typo(address: &str) -> String {
    let hex = &address[2..];
    let at = hex.find(|c: char| c.is_ascii_alphabetic()).unwrap();
    let flipped = hex[at..=at].chars().next().unwrap();
    let flipped = if flipped.is_ascii_uppercase() {
        flipped.to_ascii_lowercase()
    } else {
        flipped.to_ascii_uppercase()
    };
    format!("0x{}{flipped}{}", &hex[..at], &hex[at + 1..])
}

fn upper(address: &str) -> String {
    format!("0x{}", address[2..].to_ascii_uppercase())
}

#[tokio::test]
async fn mixed_case_addresses_must_carry_a_valid_eip55_checksum() {
    let server = TestServer::start_with(|c| crate::chain::read_chain(c, dead_rpc_url()));
    let challenge = async |address: &str| {
        server
            .post_json(
                "/api/v1/auth/challenge",
                &json!({"address": address, "chain_id": CHAIN_ID}),
            )
            .await
    };
    for accepted in [
        ALICE.address.to_string(),
        ALICE.address.to_ascii_lowercase(),
        upper(ALICE.address),
    ] {
        let (status, body) = challenge(&accepted).await;
        assert_eq!(status, 200, "{accepted}: {body}");
        // The message always names the checksummed form.
        assert!(body["message"].as_str().unwrap().contains(ALICE.address));
    }
    let (status, body) = challenge(&typo(ALICE.address)).await;
    assert_refused(status, &body, 400, "invalid_address_checksum");

    // NFT verify: the holder and the contract are both checked before any RPC is made.
    let session = server.session().await.to_string();
    let contract = BOB.address;
    let query = |holder: &str, contract: &str| json!({"address": holder, "chain_id": CHAIN_ID, "contract": contract, "standard": "erc721"});
    let (status, body) =
        nft_verify(&server, &session, &query(&typo(ALICE.address), contract)).await;
    assert_refused(status, &body, 400, "invalid_address_checksum");
    let (status, body) =
        nft_verify(&server, &session, &query(ALICE.address, &typo(contract))).await;
    assert_refused(status, &body, 400, "invalid_address_checksum");
    // A lowercase holder passes validation and reaches the (dead) node: not a 400.
    let (status, body) = nft_verify(
        &server,
        &session,
        &query(&ALICE.address.to_ascii_lowercase(), contract),
    )
    .await;
    assert_ne!(status, 400, "{body}");

    // Gate: the contract.
    let scratch = tempfile::tempdir().unwrap();
    let clip = std::fs::read(make_clip(scratch.path(), "gate.mp4", "160x120", 1)).unwrap();
    let (status, receipt) = server.upload(clip, "gate.mp4", None).await;
    assert_eq!(status, 201, "{receipt}");
    let media_id = receipt["media_id"].as_str().unwrap();
    let gate = |contract: &str| json!({"chain_id": CHAIN_ID, "contract": contract, "standard": "erc721", "min_balance": 1});
    let (status, body) = put_gate(&server, media_id, &session, &gate(&typo(contract))).await;
    assert_refused(status, &body, 400, "invalid_address_checksum");
    for accepted in [contract.to_ascii_lowercase(), upper(contract)] {
        let (status, body) = put_gate(&server, media_id, &session, &gate(&accepted)).await;
        assert_eq!(status, 200, "{accepted}: {body}");
    }
}
