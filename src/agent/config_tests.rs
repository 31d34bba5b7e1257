use super::*;

fn args() -> AgentArgs {
    AgentArgs {
        node_name: Some("n1".into()),
        addresses: vec!["198.18.0.1".parse().unwrap()],
        registry_dir: Some("/tmp/registry".into()),
        pod_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        ..AgentArgs::default()
    }
}

fn refused(args: &AgentArgs) -> String {
    match AgentConfig::merge(args, ConfigFile::default()) {
        Err(ConfigError::Invalid(message)) => message,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn settings_that_would_leak_pod_traffic_are_refused() {
    let no_pod_cidrs = AgentArgs {
        pod_cidrs: vec![],
        ..args()
    };
    assert!(refused(&no_pod_cidrs).contains("--pod-cidr"));
    // Preferred encryption too: the Pod CIDRs also bound what a record can pull into the
    // tunnel.
    let preferred = AgentArgs {
        encryption: Some(Encryption::Preferred),
        ..no_pod_cidrs.clone()
    };
    assert!(refused(&preferred).contains("--pod-cidr"));
    let control_plane_only = AgentArgs {
        no_datapath: true,
        ..no_pod_cidrs
    };
    assert!(AgentConfig::merge(&control_plane_only, ConfigFile::default()).is_ok());
    let policy_without_datapath = AgentArgs {
        policy_dir: Some("/tmp/policy".into()),
        ..control_plane_only
    };
    assert!(refused(&policy_without_datapath).contains("--policy-dir needs the datapath"));

    let mark_zero = AgentArgs {
        fwmark: Some(0),
        ..args()
    };
    assert!(refused(&mark_zero).contains("--fwmark"));
    for table in [0, 253, 254, 255] {
        let reserved = AgentArgs {
            route_table: Some(table),
            ..args()
        };
        assert!(refused(&reserved).contains("reserved"), "table {table}");
    }
    let outside = AgentArgs {
        blocks: vec!["10.1.0.0/24".parse().unwrap()],
        ..args()
    };
    assert!(refused(&outside).contains("outside the Pod CIDRs"));
}

#[test]
fn defaults_fill_what_is_not_given() {
    let config = AgentConfig::merge(&args(), ConfigFile::default()).unwrap();
    assert_eq!(config.listen_port, 51820);
    assert_eq!(config.route_protocols, [12, 186].into_iter().collect());
    assert_eq!(config.run_dir, PathBuf::from("/run/weft"));
    assert_eq!(config.key_dir, PathBuf::from("/var/lib/weft/keys"));
}

#[test]
fn a_key_rotation_interval_comes_from_flag_or_file_and_must_not_be_tiny() {
    let config = AgentConfig::merge(&args(), ConfigFile::default()).unwrap();
    assert_eq!(
        config.key_rotation_interval, None,
        "no scheduled rotation by default"
    );
    let file: ConfigFile = toml::from_str("key-rotation-interval = \"30d\"\n").unwrap();
    let config = AgentConfig::merge(&args(), file).unwrap();
    assert_eq!(
        config.key_rotation_interval,
        Some(Duration::from_secs(30 * 86_400))
    );
    let mut flags = args();
    flags.key_rotation_interval = Some(Duration::from_secs(2));
    let error = AgentConfig::merge(&flags, ConfigFile::default()).unwrap_err();
    assert!(
        error.to_string().contains("key-rotation-interval"),
        "{error}"
    );
}

#[test]
fn the_conntrack_pickup_window_comes_from_flag_or_file_and_0s_disables_it() {
    let pickup = |flags: &AgentArgs, file: &str| {
        let file: ConfigFile = toml::from_str(file).unwrap();
        AgentConfig::merge(flags, file).map(|config| {
            config
                .datapath
                .expect("the datapath is on")
                .conntrack_pickup
        })
    };
    assert_eq!(pickup(&args(), "").unwrap(), Duration::from_secs(120));
    let file = "conntrack-pickup = \"0s\"\n";
    assert_eq!(pickup(&args(), file).unwrap(), Duration::ZERO);
    let mut flags = args();
    flags.conntrack_pickup = Some(Duration::from_secs(30));
    assert_eq!(pickup(&flags, file).unwrap(), Duration::from_secs(30));
    flags.conntrack_pickup = Some(Duration::from_secs(3601));
    let error = pickup(&flags, "").unwrap_err();
    assert!(error.to_string().contains("conntrack-pickup"), "{error}");
}

#[test]
fn flags_win_over_the_file() {
    let file: ConfigFile = toml::from_str(
        "node-name = \"file-node\"\nblocks = [\"10.244.9.0/24\"]\nlisten-port = 5000\nroute-protocols = [\"zebra\"]\ndebounce = \"1s\"\n",
    )
    .unwrap();
    let mut flags = args();
    flags.listen_port = Some(6000);
    let config = AgentConfig::merge(&flags, file).unwrap();
    assert_eq!(config.node_name, "n1");
    assert_eq!(config.listen_port, 6000);
    assert_eq!(
        config.blocks,
        vec!["10.244.9.0/24".parse::<IpNetwork>().unwrap()]
    );
    assert_eq!(config.route_protocols, [11].into_iter().collect());
    assert_eq!(config.debounce, Duration::from_secs(1));
}

#[test]
fn unknown_config_keys_are_refused() {
    assert!(toml::from_str::<ConfigFile>("nodename = \"x\"").is_err());
}

#[test]
fn missing_or_bad_settings_have_clear_errors() {
    let mut no_name = args();
    no_name.node_name = None;
    let error = AgentConfig::merge(&no_name, ConfigFile::default()).unwrap_err();
    assert!(error.to_string().contains("--node-name"), "{error}");

    let mut bad_name = args();
    bad_name.node_name = Some("Node_1".into());
    assert!(AgentConfig::merge(&bad_name, ConfigFile::default()).is_err());

    let mut no_address = args();
    no_address.addresses.clear();
    let error = AgentConfig::merge(&no_address, ConfigFile::default()).unwrap_err();
    assert!(error.to_string().contains("--address"), "{error}");

    let mut no_registry = args();
    no_registry.registry_dir = None;
    let error = AgentConfig::merge(&no_registry, ConfigFile::default()).unwrap_err();
    assert!(error.to_string().contains("--registry-dir"), "{error}");
}

#[test]
fn endpoint_supplies_the_address_when_none_is_given() {
    let mut flags = args();
    flags.addresses.clear();
    flags.endpoint = Some("198.18.0.7:51820".parse().unwrap());
    let config = AgentConfig::merge(&flags, ConfigFile::default()).unwrap();
    assert_eq!(
        config.addresses,
        vec!["198.18.0.7".parse::<IpAddr>().unwrap()]
    );
}
