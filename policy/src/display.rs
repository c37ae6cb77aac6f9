//! What a request does, in words people check before they approve it: amounts in the units of
//! the policy's asset registry (`11 ETH`, `2500 USDC`, base units for a token the registry does
//! not know) and addresses with their address-book labels. The words come from the decoded
//! action the daemon signs and the policy in force; they add nothing the action does not say.

use alloy_primitives::{Address, U256};

use crate::amount::{AmountFormat, AssetId};
use crate::parse::format_of;
use crate::{Action, Kind, Policy};

/// Most grants listed one by one; more are counted.
const SHOWN_GRANTS: usize = 8;

impl Policy {
    /// An address with the labels the address books give it: `0x… (Kraken deposit, book
    /// `exchanges`)`, or the bare address (EIP-55) when no book labels it.
    pub fn label_address(&self, address: &Address) -> String {
        let labels = self.address_labels(address);
        if labels.is_empty() {
            return address.to_string();
        }
        let named: Vec<String> = labels
            .iter()
            .map(|(book, label)| format!("\"{label}\" in book `{book}`"))
            .collect();
        format!("{address} ({})", named.join("; "))
    }

    /// `amount` of `asset` in the registry's units; a native coin the registry does not name in
    /// `ether` (18 decimals on every EVM chain), a token it does not name in base units.
    pub fn format_amount(&self, asset: AssetId, amount: U256) -> String {
        format_of(&self.assets, asset).format(amount)
    }

    fn token_amount(&self, chain: Option<u64>, token: Address, amount: U256) -> String {
        match chain {
            Some(c) => {
                let f = format_of(&self.assets, AssetId::token(c, token));
                if f == AmountFormat::base_units() {
                    format!("{amount} base units of token {token} (not in the asset registry)")
                } else {
                    f.format(amount)
                }
            }
            None => format!("{amount} base units of token {token}"),
        }
    }

    /// Lines that say what `action` does, for approvers.
    pub fn describe_action(&self, a: &Action) -> Vec<String> {
        let mut out = Vec::new();
        let chain = a.chain_id;
        let on = chain.map_or_else(
            || "on an unknown chain".to_owned(),
            |c| format!("on chain {c}"),
        );
        let native = |v: U256| match chain {
            Some(c) => self.format_amount(AssetId::native(c), v),
            None => format!("{v} wei"),
        };
        let dest = |x: Option<Address>| {
            x.map_or_else(|| "no destination".to_owned(), |t| self.label_address(&t))
        };
        match a.kind {
            Kind::NativeTransfer => {
                out.push(format!("send {} {on} to {}", native(a.value), dest(a.to)));
            }
            Kind::Erc20Transfer | Kind::Erc20TransferFrom | Kind::Erc20Approve => {
                match &a.erc20 {
                    Some(e) => {
                        let amount = self.token_amount(chain, e.token, e.amount);
                        let who = self.label_address(&e.counterparty);
                        out.push(match (a.kind, e.from) {
                            (Kind::Erc20Approve, _) => {
                                format!("approve {who} to spend {amount} {on}")
                            }
                            (_, Some(from)) => format!(
                                "transfer {amount} {on} from {} to {who}",
                                self.label_address(&from)
                            ),
                            _ => format!("transfer {amount} {on} to {who}"),
                        });
                        out.push(format!("token contract {}", self.label_address(&e.token)));
                    }
                    None => out.push(format!(
                        "{} {on} to {} (arguments not decoded)",
                        a.kind,
                        dest(a.to)
                    )),
                }
                if !a.value.is_zero() {
                    out.push(format!("also sends {}", native(a.value)));
                }
            }
            Kind::ContractCall => {
                let sel = a
                    .selector
                    .map_or_else(String::new, |s| format!(", function 0x{}", hex::encode(s)));
                out.push(format!(
                    "call {} {on} with {}{sel}",
                    dest(a.to),
                    native(a.value)
                ));
            }
            Kind::ContractCreation => {
                out.push(format!("deploy a contract {on} with {}", native(a.value)));
            }
            _ => out.push(format!("{} with key `{}`", a.kind, a.key)),
        }
        if let (Some(g), Some(f)) = (a.gas_limit, a.max_fee_per_gas) {
            let fee = U256::from(g).saturating_mul(f);
            out.push(format!("fee at most {}", native(fee)));
        }
        if let Some(td) = &a.typed_data {
            let tchain = td.domain_chain_id.and_then(|c| u64::try_from(c).ok());
            for g in td.grants.iter().take(SHOWN_GRANTS) {
                out.push(format!(
                    "grants {} to {}",
                    self.token_amount(tchain, g.token, g.amount),
                    self.label_address(&g.counterparty)
                ));
            }
            if td.grants.len() > SHOWN_GRANTS {
                out.push(format!("… {} more grants", td.grants.len() - SHOWN_GRANTS));
            }
            if let Some(v) = td.verifying_contract {
                out.push(format!("verifying contract {}", self.label_address(&v)));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::Erc20Call;
    use crate::tests::policy;

    const USDC: &str = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48";
    const KRAKEN: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";

    fn p() -> Policy {
        policy(&format!(
            r#"version = 1
serial = 1
[address_books.exchanges]
addresses = [{{ address = "{KRAKEN}", label = "Kraken deposit" }}]
[[asset]]
chain_id = 1
contract = "native"
symbol = "ETH"
decimals = 18
[[asset]]
chain_id = 1
contract = "{USDC}"
symbol = "USDC"
decimals = 6
"#
        ))
    }

    #[test]
    fn amounts_in_units_and_destinations_with_labels() {
        let p = p();
        let mut a = Action::new("hot", Kind::NativeTransfer);
        a.chain_id = Some(1);
        a.to = Some(KRAKEN.parse().unwrap());
        a.value = U256::from(11u64) * U256::from(10u64).pow(U256::from(18u64));
        a.gas_limit = Some(21_000);
        a.max_fee_per_gas = Some(U256::from(1_000_000_000u64));
        assert_eq!(
            p.describe_action(&a),
            vec![
                format!(
                    "send 11 ETH on chain 1 to {KRAKEN} (\"Kraken deposit\" in book `exchanges`)"
                ),
                "fee at most 0.000021 ETH".to_owned()
            ]
        );
        let mut t = Action::new("hot", Kind::Erc20Transfer);
        t.chain_id = Some(1);
        t.to = Some(USDC.parse().unwrap());
        t.erc20 = Some(Erc20Call {
            token: USDC.parse().unwrap(),
            from: None,
            counterparty: KRAKEN.parse().unwrap(),
            amount: U256::from(2_500_000_000u64),
        });
        let lines = p.describe_action(&t);
        assert_eq!(
            lines[0],
            format!(
                "transfer 2500 USDC on chain 1 to {KRAKEN} (\"Kraken deposit\" in book `exchanges`)"
            )
        );
        // A token the registry does not know is shown in base units, and says so.
        t.chain_id = Some(5);
        let lines = p.describe_action(&t);
        assert!(
            lines[0].starts_with(&format!("transfer 2500000000 base units of token {USDC} (not in the asset registry) on chain 5")),
            "{lines:?}"
        );
    }
}
