"""
Configuration of evbus: every option can be given on the command line, by
environment variable (``EVBUS_<OPTION>``) or in a config file under ``evbus:``.
"""

CLI_CONFIG = {
    "config": {"options": ["-c"], "subcommands": ["_global_"]},
    "serialize_plugin": {"subcommands": ["_global_"]},
    "serial_plugin": {"subcommands": ["_global_"]},
    "match_plugin": {"subcommands": ["_global_"]},
    "error_callback_ref": {"subcommands": ["_global_"]},
    "stop_timeout": {"subcommands": ["_global_"]},
    "publish_timeout": {"subcommands": ["_global_"]},
    "retry_attempts": {"subcommands": ["_global_"]},
    "retry_seconds": {"subcommands": ["_global_"]},
    "retry_backoff": {"subcommands": ["_global_"]},
    "retry_backoff_max": {"subcommands": ["_global_"]},
    "max_in_flight": {"subcommands": ["_global_"]},
    "queue_size": {"subcommands": ["_global_"]},
    "lane_size": {"subcommands": ["_global_"]},
    "lane_full": {"subcommands": ["_global_"]},
    "dead_letter_file": {"subcommands": ["_global_"]},
    "spool": {"subcommands": ["_global_"]},
    "spool_sync": {"subcommands": ["_global_"]},
    "acct_file": {"subcommands": ["_global_"]},
    "acct_key": {"subcommands": ["_global_"]},
    "events": {
        "positional": True,
        "nargs": "*",
        "display_priority": 0,
        "subcommands": ["publish"],
    },
    "profile": {"subcommands": ["publish", "listen"]},
    "file": {"subcommands": ["publish"]},
    "routing_key": {"subcommands": ["publish", "listen"]},
    "count": {"subcommands": ["listen"]},
    "timeout": {"subcommands": ["publish", "replay", "profiles", "listen"]},
    "output": {"subcommands": ["profiles"]},
    "plugin": {"subcommands": ["replay"]},
    "acct_profile": {"subcommands": ["replay"]},
}

CONFIG = {
    "config": {
        "default": None,
        "os": "EVBUS_CONFIG",
        "help": "A config file (YAML) with options under the key 'evbus'",
    },
    "serialize_plugin": {
        "default": "json",
        "type": str,
        "os": "EVBUS_SERIALIZE_PLUGIN",
        "help": "The serialize plugin that turns event bodies into bytes: json, msgpack or str",
    },
    "serial_plugin": {
        "default": None,
        "type": str,
        "os": "EVBUS_SERIAL_PLUGIN",
        "help": "The option name of pop-evbus 6.x/7.x for serialize_plugin; when set it wins",
    },
    "match_plugin": {
        "default": "glob",
        "type": str,
        "os": "EVBUS_MATCH_PLUGIN",
        "help": "How profile names match event profiles: glob (fnmatch) or regex (full match)",
    },
    "error_callback_ref": {
        "default": None,
        "type": str,
        "os": "EVBUS_ERROR_CALLBACK_REF",
        "help": "A function on the hub (e.g. 'my_app.errors.handle') called with a dict for every failed publish",
    },
    "stop_timeout": {
        "default": 30.0,
        "type": float,
        "os": "EVBUS_STOP_TIMEOUT",
        "help": "Seconds stop() waits for the lanes to deliver what was put before it",
    },
    "publish_timeout": {
        "default": 10.0,
        "type": float,
        "os": "EVBUS_PUBLISH_TIMEOUT",
        "help": "Seconds one broker call of a lane (hand-off or confirmation) may take before it counts as failed",
    },
    "retry_attempts": {
        "default": 0,
        "type": int,
        "os": "EVBUS_RETRY_ATTEMPTS",
        "help": "Publish attempts per event at most (1 = no retry); 0 = no cap, retry_seconds decides",
    },
    "retry_seconds": {
        "default": 30.0,
        "type": float,
        "os": "EVBUS_RETRY_SECONDS",
        "help": (
            "Seconds an event is retried after its first failure; its last attempt starts when "
            "they end, so a broker outage shorter than this loses no event"
        ),
    },
    "retry_backoff": {
        "default": 0.1,
        "type": float,
        "os": "EVBUS_RETRY_BACKOFF",
        "help": "Delay ceiling of the first retry in seconds; it doubles per retry (full jitter)",
    },
    "retry_backoff_max": {
        "default": 5.0,
        "type": float,
        "os": "EVBUS_RETRY_BACKOFF_MAX",
        "help": "The largest retry delay ceiling in seconds",
    },
    "max_in_flight": {
        "default": 1000,
        "type": int,
        "os": "EVBUS_MAX_IN_FLIGHT",
        "help": "Events a lane hands to a broker before the oldest is confirmed, at most",
    },
    "queue_size": {
        "default": 0,
        "type": int,
        "os": "EVBUS_QUEUE_SIZE",
        "help": "Events the broker queue holds at most; then put() waits and put_nowait() raises (0: no bound)",
    },
    "lane_size": {
        "default": 100000,
        "type": int,
        "os": "EVBUS_LANE_SIZE",
        "help": "Events one lane holds at most (0: no bound); see lane_full",
    },
    "lane_full": {
        "default": "wait",
        "type": str,
        "os": "EVBUS_LANE_FULL",
        "help": "When a lane is full: 'wait' (the listener waits: backpressure up to put) or 'dead-letter' (its oldest event is given up)",
    },
    "dead_letter_file": {
        "default": None,
        "type": str,
        "os": "EVBUS_DEAD_LETTER_FILE",
        "help": "The JSON lines file of given-up events (default: $XDG_STATE_HOME/evbus/dead-letters.jsonl)",
    },
    "spool": {
        "default": None,
        "type": str,
        "os": "EVBUS_SPOOL",
        "help": "A local log file: put() returns once the event is written there, and start() re-delivers what a crash left (default: no spool)",
    },
    "spool_sync": {
        "default": "normal",
        "type": str,
        "os": "EVBUS_SPOOL_SYNC",
        "help": "When the spool reaches the disk: normal (synced every second: a crash loses nothing, a power loss the last second at most), full (before put() returns: a power loss loses nothing), off (never: fastest; a power loss may lose or corrupt the spool)",
    },
    "acct_file": {
        "default": None,
        "type": str,
        "os": "ACCT_FILE",
        "help": "The acct file with the ingress profiles (encrypted with 'acct encrypt', or plain YAML)",
    },
    "acct_key": {
        "default": None,
        "type": str,
        "os": "ACCT_KEY",
        "help": "The key of the encrypted acct file",
    },
    "profile": {
        "default": "default",
        "type": str,
        "os": "EVBUS_PROFILE",
        "help": "evbus publish: the profile of the events; evbus listen: the acct profile whose destination to listen on",
    },
    "routing_key": {
        "default": None,
        "type": str,
        "os": "EVBUS_ROUTING_KEY",
        "help": "evbus publish: the routing key of the events; evbus listen: the routing key to listen for",
    },
    "timeout": {
        "default": 5.0,
        "type": float,
        "os": "EVBUS_TIMEOUT",
        "help": "Seconds the evbus command waits: for the bus to start, for a connection (profiles), or (listen) for the next message; 0 for ever with listen. publish stops the bus within stop_timeout",
    },
    "count": {
        "default": 0,
        "type": int,
        "help": "evbus listen: stop after this many messages (0: no limit)",
    },
    "file": {
        "default": None,
        "type": str,
        "help": "evbus publish: a file of events, one JSON document per line",
    },
    "output": {
        "default": "yaml",
        "type": str,
        "choices": ["yaml", "json"],
        "help": "evbus profiles: the output format, yaml or json",
    },
    "plugin": {
        "default": None,
        "type": str,
        "help": "evbus replay: only the dead letters of this ingress plugin",
    },
    "acct_profile": {
        "default": None,
        "type": str,
        "help": "evbus replay: only the dead letters of this acct profile",
    },
    "events": {
        "default": [],
        "help": "Events to publish, each a JSON document; without any, JSON lines are read from stdin",
    },
}

SUBCOMMANDS = {
    "publish": {
        "help": "Publish events to the configured profiles and print what arrives on the internal ingress",
        "dyne": "evbus",
    },
    "replay": {
        "help": "Publish the dead letters again to their destinations and remove those delivered",
        "dyne": "evbus",
    },
    "profiles": {
        "help": "Show the configured profiles per provider, secrets masked, and whether each destination is reachable",
        "dyne": "evbus",
    },
    "listen": {
        "help": "Print what arrives at a profile's destination (Kafka topic, AMQP queue, ...), for debugging a deployment",
        "dyne": "evbus",
    },
}

DYNE = {
    "evbus": ["evbus"],
    "ingress": ["ingress"],
    "log": ["log"],
    "match": ["match"],
    "serialize": ["serialize"],
}
