package main

import (
	"flag"
	"fmt"

	"github.com/spillwayhq/spillway/forwarders"
	"github.com/spillwayhq/spillway/internal/privacy"
)

// contractFlags registers the flags of the data contracts enforced at the
// edge: the privacy rules applied before an event is stored.
func contractFlags(fs *flag.FlagSet, c *serverConfig) {
	fs.Var((*stringList)(&c.proxy.DropFields), "drop-field", "comma list of event fields removed before storing, e.g. context.ip,properties.*_token; repeatable (per destination: ?drop=)")
	fs.Var((*stringList)(&c.proxy.HashFields), "hash-field", "comma list of event fields replaced by their hex HMAC-SHA256 under --hash-key-file before storing; repeatable (per destination: ?hash=)")
	fs.StringVar(&c.proxy.IP, "ip", "keep", "context.ip before storing: keep, truncate (IPv4 /24, IPv6 /48) or drop (per destination: ?ip=)")
	fs.StringVar(&c.proxy.HashKeyFile, "hash-key-file", "", "file holding the key of --hash-field and of destinations' hash= (its content, white space trimmed)")
}

// configureContracts gives the destinations the hash key and checks their
// privacy rules, so that a hash= without --hash-key-file is a usage error.
func configureContracts(c *serverConfig, dests []forwarders.Destination) error {
	var key []byte
	if c.proxy.HashKeyFile != "" {
		var err error
		if key, err = privacy.LoadKey(c.proxy.HashKeyFile); err != nil {
			return fmt.Errorf("--hash-key-file: %w", err)
		}
	}
	for i := range dests {
		dests[i].HashKey = key
		if _, err := dests[i].Privacy(); err != nil {
			return fmt.Errorf("--destination: %w", err)
		}
	}
	return nil
}
