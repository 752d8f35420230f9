//! The balancer's flow tables as one: IPv4 flows live in `LB_FLOWS4`
//! (16-byte keys, cheaper for the program to hash and compare), IPv6 flows
//! in `LB_FLOWS`; the model, `simulate` and the tests see one table of
//! [`FlowKey`].

use xdpkit_common::balancer::{FlowKey, FlowKey4, FlowReal, LB_FLOWS, LB_FLOWS4};

use crate::{
    maps::{batch, MapSource},
    Result,
};

/// Every flow of both tables.
pub fn dump(maps: &impl MapSource) -> Result<Vec<(FlowKey, FlowReal)>> {
    let mut flows: Vec<(FlowKey, FlowReal)> =
        batch::dump::<FlowKey4, FlowReal>(maps, LB_FLOWS4, usize::MAX)?
            .into_iter()
            .map(|(k, v)| (k.widen(), v))
            .collect();
    flows.extend(batch::dump::<FlowKey, FlowReal>(
        maps,
        LB_FLOWS,
        usize::MAX,
    )?);
    Ok(flows)
}

/// Writes `flows`, each into its family's table.
pub fn write(maps: &impl MapSource, flows: &[(FlowKey, FlowReal)]) -> Result<()> {
    let (mut keys4, mut values4, mut keys6, mut values6) = (vec![], vec![], vec![], vec![]);
    for (key, value) in flows {
        match key.narrow() {
            Some(k) => {
                keys4.push(k);
                values4.push(*value);
            }
            None => {
                keys6.push(*key);
                values6.push(*value);
            }
        }
    }
    if !keys4.is_empty() {
        batch::update(maps, LB_FLOWS4, &keys4, &values4)?;
    }
    if !keys6.is_empty() {
        batch::update(maps, LB_FLOWS, &keys6, &values6)?;
    }
    Ok(())
}
