//! `ringest loadgen ADDR --print-default-config`: the stage table that
//! receives this load, ready for `ringest run --config`: the engine's
//! commented default table of the stage's kind, with its address set to
//! ADDR (for a multicast group: the wildcard address on its port, and the
//! group joined).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Context;

/// The `[[tcp_server]]` (or with `udp`, `[[udp]]`) table of the engine's
/// default configuration, set up to receive at `address`.
pub fn stage_table(address: SocketAddr, udp: bool) -> anyhow::Result<String> {
    let defaults = engine::config::default_config_toml();
    let header = if udp { "# [[udp]]" } else { "[[tcp_server]]" };
    // Tables are blocks of lines between blank lines.
    let block = defaults
        .split("\n\n")
        .find(|block| block.lines().any(|line| line == header))
        .with_context(|| format!("the engine's default configuration has no {header} table"))?;
    let (bind, group) = match address.ip() {
        IpAddr::V4(ip) if ip.is_multicast() => {
            (SocketAddr::from((Ipv4Addr::UNSPECIFIED, address.port())), Some(ip.into()))
        }
        IpAddr::V6(ip) if ip.is_multicast() => {
            (SocketAddr::from((Ipv6Addr::UNSPECIFIED, address.port())), Some(IpAddr::V6(ip)))
        }
        _ => (address, None),
    };
    let kind = if udp { "UDP" } else { "TCP" };
    let mut table = format!(
        "# A {kind} stage that receives `ringest loadgen {address}{}`: save as FILE, then\n\
         # `ringest run --config FILE`.\n",
        if udp { " --udp" } else { "" }
    );
    for line in block.lines() {
        let key = line.trim_start_matches("# ").split(" = ").next().unwrap_or_default();
        let line = match key {
            _ if line == header => header.trim_start_matches("# ").to_owned(),
            "name" => line.trim_start_matches("# ").to_owned(),
            "address" => format!("address = \"{bind}\""),
            "multicast_groups" if group.is_some() => {
                format!("multicast_groups = [\"{}\"]", group.expect("checked"))
            }
            _ => line.to_owned(),
        };
        table.push_str(&line);
        table.push('\n');
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::config::EngineConfig;

    #[test]
    fn the_tables_are_ready_to_run_on_the_address() {
        let udp = stage_table("127.0.0.1:9000".parse().unwrap(), true).unwrap();
        let config = EngineConfig::from_toml_str(&udp).unwrap();
        assert_eq!((config.udp.len(), config.tcp_server.len()), (1, 0), "{udp}");
        assert_eq!(config.udp[0].address, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.udp[0].name, "udp");
        assert!(udp.contains("\n# max_datagram_size_b = 65507\n"), "the other keys stay documented: {udp}");

        let group = stage_table("239.1.2.3:2368".parse().unwrap(), true).unwrap();
        let config = EngineConfig::from_toml_str(&group).unwrap();
        assert_eq!(config.udp[0].address, "0.0.0.0:2368".parse().unwrap());
        assert_eq!(config.udp[0].multicast_groups, ["239.1.2.3".parse::<IpAddr>().unwrap()]);

        let tcp = stage_table("[::1]:7500".parse().unwrap(), false).unwrap();
        let config = EngineConfig::from_toml_str(&tcp).unwrap();
        assert_eq!((config.udp.len(), config.tcp_server.len()), (0, 1), "{tcp}");
        assert_eq!(config.tcp_server[0].address, "[::1]:7500".parse().unwrap());
    }
}
