package proxy

import (
	"errors"
	"fmt"
	"time"
)

// Defaults are Segment's own limits, so an SDK that respects Segment's API
// never hits a stricter one here.
const (
	DefaultMaxEventBytes   = 32 << 10  // --max-event-bytes
	DefaultMaxRequestBytes = 500 << 10 // --max-request-bytes
	DefaultMaxBatchEvents  = 2500      // --max-batch-events

	// DefaultMaxConns is --max-conns: far above what a sidecar's app opens,
	// low enough that a flood of connections cannot exhaust memory or fds.
	DefaultMaxConns = 10000
	// DefaultReadTimeout bounds reading one request, headers and body, from
	// its first byte (or from the accept, for a connection's first request),
	// so a client that trickles bytes (slowloris) is cut off.
	DefaultReadTimeout = 30 * time.Second
	// DefaultIdleTimeout bounds the wait for the next request on a
	// keep-alive connection. It is above the 90 s that Go and Node
	// keep-alive clients wait, so they close first and never send on a
	// connection we are closing.
	DefaultIdleTimeout = 120 * time.Second
)

// Config is the proxy's part of the command line. cmd registers the flags;
// the names in Validate's messages are theirs.
type Config struct {
	// WriteKeys, when not empty, are the only write keys accepted (--write-key,
	// repeatable); a request with a missing or unknown key is answered 401.
	// Empty accepts any key, including none.
	WriteKeys []string
	// Strict answers 400 to a request holding any spec-invalid event and
	// stores nothing of it (--strict). False (the default) stores the valid
	// events, dead-letters the invalid ones and answers 200, as Segment does.
	Strict bool
	// MaxEventBytes bounds one event as the client sent it, merged with the
	// batch-level context/integrations (--max-event-bytes). Default
	// DefaultMaxEventBytes; must be > 0.
	MaxEventBytes int
	// MaxRequestBytes bounds a request body, after gzip inflation
	// (--max-request-bytes). Default DefaultMaxRequestBytes; must be > 0.
	MaxRequestBytes int
	// MaxBatchEvents bounds the events of one batch (--max-batch-events).
	// Default DefaultMaxBatchEvents; must be > 0.
	MaxBatchEvents int
	// AdminToken, when set, lets a non-loopback client use the dead-letter
	// admin endpoints with "Authorization: Bearer <AdminToken>"
	// (--admin-token). Empty allows them from loopback addresses only.
	AdminToken string
	// WriteKeyFile, when set, names a file of accepted write keys, one a
	// line, blank lines and #comments ignored, as mounted from a Kubernetes
	// secret (--write-key-file). Its keys are added to WriteKeys; it must
	// hold at least one, and Server.Reload rereads it.
	WriteKeyFile string
	// TLSCertFile and TLSKeyFile, both set, make the main listener serve
	// HTTPS with that PEM certificate chain and key (--tls-cert,
	// --tls-key); Server.Reload rereads them. The admin listener
	// (--admin-listen) stays plain HTTP. Empty serves plain HTTP.
	TLSCertFile, TLSKeyFile string
	// MaxConns caps the connections served at once, idle keep-alive ones
	// included (--max-conns); past it a new connection is answered 503 and
	// closed (over TLS closed without an answer, which would wait for the
	// client's handshake). Zero means DefaultMaxConns.
	MaxConns int
	// ReadTimeout and IdleTimeout: zero means DefaultReadTimeout and
	// DefaultIdleTimeout. Not flags; tests shorten them.
	ReadTimeout, IdleTimeout time.Duration
}

// DefaultConfig returns the Config that `spillway run` uses with no flags.
func DefaultConfig() Config {
	return Config{
		MaxEventBytes:   DefaultMaxEventBytes,
		MaxRequestBytes: DefaultMaxRequestBytes,
		MaxBatchEvents:  DefaultMaxBatchEvents,
	}
}

// CheckSecrets reads --write-key-file and the --tls-cert/--tls-key pair as
// New will, so that a missing or malformed one is a usage error found
// before anything is opened, rather than a failure after the spool is.
func (c Config) CheckSecrets() error {
	var errs []error
	if _, err := acceptedKeys(c); err != nil {
		errs = append(errs, err)
	}
	if c.TLSCertFile != "" {
		if _, err := newCertStore(c.TLSCertFile, c.TLSKeyFile); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// ValidateFlags is Validate for values read from the flags, whose defaults
// are never zero: --max-conns 0 was written by someone who meant something
// other than the default, and is refused where Validate reads it as
// DefaultMaxConns.
func (c Config) ValidateFlags() error {
	err := c.Validate()
	if c.MaxConns == 0 {
		err = errors.Join(err, errors.New("--max-conns must be > 0"))
	}
	return err
}

// Validate reports every invalid field, each naming its flag.
func (c Config) Validate() error {
	var errs []error
	for _, k := range c.WriteKeys {
		if k == "" {
			errs = append(errs, errors.New("--write-key must not be empty"))
			break
		}
	}
	if c.MaxEventBytes <= 0 {
		errs = append(errs, errors.New("--max-event-bytes must be > 0"))
	}
	if c.MaxRequestBytes <= 0 {
		errs = append(errs, errors.New("--max-request-bytes must be > 0"))
	}
	if c.MaxBatchEvents <= 0 {
		errs = append(errs, errors.New("--max-batch-events must be > 0"))
	}
	if c.MaxConns < 0 {
		errs = append(errs, errors.New("--max-conns must be >= 0"))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("--tls-cert and --tls-key must be given together"))
	}
	if c.MaxEventBytes > 0 && c.MaxRequestBytes > 0 && c.MaxEventBytes > c.MaxRequestBytes {
		errs = append(errs, fmt.Errorf("--max-event-bytes (%d) must be <= --max-request-bytes (%d)", c.MaxEventBytes, c.MaxRequestBytes))
	}
	return errors.Join(errs...)
}
