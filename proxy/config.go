package proxy

import (
	"errors"
	"fmt"
	"time"

	"github.com/spillwayhq/spillway/internal/plan"
	"github.com/spillwayhq/spillway/internal/privacy"
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
	// Strict answers 400 to a request holding any spec-invalid event, or
	// an event over MaxEventBytes, and stores nothing of it (--strict).
	// False (the default) stores the other events, dead-letters those and
	// answers 200, as Segment does for invalid ones.
	Strict bool
	// MaxEventBytes bounds one event as the client sent it, merged with the
	// batch-level context/integrations (--max-event-bytes): a larger event
	// of a batch is dead-lettered alone (reason too_large), a larger single
	// event refuses its request. Default DefaultMaxEventBytes; must be > 0.
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

	// DropFields and HashFields are comma lists of paths (see
	// internal/privacy) removed from every event, or replaced by their
	// hex HMAC-SHA256 under the key of HashKeyFile, before it is stored
	// (--drop-field, --hash-field, repeatable): what they name never
	// reaches the disk. Empty changes nothing.
	DropFields, HashFields []string
	// IP is what happens to context.ip before an event is stored (--ip):
	// keep (or empty), truncate (IPv4 to its /24, IPv6 to its /48) or
	// drop.
	IP string
	// HashKeyFile names the file whose content, white space trimmed, is
	// the key of every hash (--hash-key-file). HashFields needs it.
	HashKeyFile string

	// TrackingPlan names a tracking plan file (--tracking-plan, see
	// internal/plan) every event is checked against after the spec rules;
	// Server.Reload rereads it. Empty checks nothing.
	TrackingPlan string
	// TrackingPlanMode is what an event breaking the plan's rules leads
	// to (--tracking-plan-mode): flag (or empty: stored with
	// context.violations), block (dead-lettered, reason violation) or off.
	TrackingPlanMode string
	// TrackingPlanUnplanned is what a track event the plan does not name
	// leads to (--tracking-plan-unplanned): allow, flag (or empty) or
	// block.
	TrackingPlanUnplanned string
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
	if _, err := c.privacyRules(); err != nil {
		errs = append(errs, err)
	}
	if _, err := c.loadPlan(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// privacyRules compiles DropFields, HashFields and IP, reading
// HashKeyFile; nil when they change nothing.
func (c Config) privacyRules() (*privacy.Rules, error) {
	drop, hash, ip, err := c.privacyPaths()
	if err != nil {
		return nil, err
	}
	var key []byte
	if c.HashKeyFile != "" {
		if key, err = privacy.LoadKey(c.HashKeyFile); err != nil {
			return nil, fmt.Errorf("--hash-key-file: %w", err)
		}
	}
	return privacy.New(drop, hash, ip, key)
}

// privacyPaths parses the privacy flags, each error naming its flag.
func (c Config) privacyPaths() (drop, hash []privacy.Path, ip privacy.IPMode, err error) {
	var errs []error
	parse := func(flag string, lists []string) []privacy.Path {
		var out []privacy.Path
		for _, l := range lists {
			p, err := privacy.ParsePaths(l)
			if err != nil {
				errs = append(errs, fmt.Errorf("--%s: %w", flag, err))
			}
			out = append(out, p...)
		}
		return out
	}
	drop = parse("drop-field", c.DropFields)
	hash = parse("hash-field", c.HashFields)
	if ip, err = privacy.ParseIPMode(c.IP); err != nil {
		errs = append(errs, fmt.Errorf("--ip: %w", err))
	}
	if len(hash) > 0 && c.HashKeyFile == "" {
		errs = append(errs, errors.New("--hash-field needs --hash-key-file"))
	}
	return drop, hash, ip, errors.Join(errs...)
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
	if _, _, _, err := c.privacyPaths(); err != nil {
		errs = append(errs, err)
	}
	if _, err := plan.ParseMode(c.TrackingPlanMode); err != nil {
		errs = append(errs, fmt.Errorf("--tracking-plan-mode: %w", err))
	}
	if _, err := plan.ParseUnplanned(c.TrackingPlanUnplanned); err != nil {
		errs = append(errs, fmt.Errorf("--tracking-plan-unplanned: %w", err))
	}
	if c.MaxEventBytes > 0 && c.MaxRequestBytes > 0 && c.MaxEventBytes > c.MaxRequestBytes {
		errs = append(errs, fmt.Errorf("--max-event-bytes (%d) must be <= --max-request-bytes (%d)", c.MaxEventBytes, c.MaxRequestBytes))
	}
	return errors.Join(errs...)
}
