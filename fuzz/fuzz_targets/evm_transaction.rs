//! Transaction requests come from clients: any protobuf bytes, decoded and prepared, must either
//! be refused with an error or encode a transaction; never panic.
#![no_main]

use prost::Message;
use signerd_proto::v1::SignEvmTransactionRequest;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(req) = SignEvmTransactionRequest::decode(data) else {
        return;
    };
    if let Ok(tx) = signerd::chain::evm::prepare_transaction(&req) {
        let _ = tx.signing_hash();
        let _ = tx.encode_signed([0x11; 32], [0x22; 32], data.len() % 2 == 0);
    }
});
