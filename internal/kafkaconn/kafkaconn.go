package kafkaconn

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// DefaultPasswordEnv is the environment variable the SASL password is read
// from unless ?password_env= names another.
const DefaultPasswordEnv = "SPILLWAY_KAFKA_PASSWORD"

// Conn is how to reach a cluster: the brokers, TLS and SASL. The zero
// value of each field means the default given.
type Conn struct {
	Brokers []string // seed brokers, host:port; from the URL's host part
	TLS     bool     // dial the brokers with TLS 1.2+ (system roots)
	SASL    string   // "" (none), plain, scram-sha-256 or scram-sha-512
	User    string   // SASL user name
	// Password is the SASL password given in the URL (?password=). It is
	// redacted wherever it is printed; prefer PasswordEnv, since a URL
	// shows in process listings and manifests.
	Password Secret
	// PasswordEnv names the environment variable holding the SASL password
	// when Password is empty; default DefaultPasswordEnv. It is read when
	// the client is built.
	PasswordEnv string
	// Dial, when not nil, connects to the brokers instead of the system's
	// network, with TLS off: for tests on an in-memory network and for
	// embedding. Not settable from the URL.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// Secret is a string that prints as [redacted], so that a password kept in
// a struct never reaches a log or an error through fmt or slog.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return `"[redacted]"` }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }

// topicRE is compiled at its first use: its repetition compiles to 249
// copies of the class, 3,000 allocations that every spillway start paid
// at package init, Kafka or not.
var topicRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`) })

// ParseURL sets c.Brokers from kafka://h1:9092,h2:9092/topic and returns
// the topic. The URL's parameters are the caller's to apply.
func (c *Conn) ParseURL(u *url.URL) (topic string, err error) {
	if u.User != nil {
		return "", errors.New("a kafka URL takes credentials as ?user= and password_env= (or password=), not in the URL")
	}
	if u.Opaque != "" || u.Host == "" {
		return "", errors.New("kafka URL has no broker, write kafka://host:9092[,host2:9092]/topic")
	}
	c.Brokers = nil
	for _, b := range strings.Split(u.Host, ",") {
		if b == "" {
			return "", fmt.Errorf("empty broker address in %q", u.Host)
		}
		if _, port, err := net.SplitHostPort(b); err != nil {
			b = net.JoinHostPort(b, "9092")
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("broker %q: bad port", b)
		}
		c.Brokers = append(c.Brokers, b)
	}
	topic = strings.TrimPrefix(u.Path, "/")
	if !topicRE().MatchString(topic) || topic == "." || topic == ".." {
		return "", fmt.Errorf("kafka topic %q: want 1-249 of [a-zA-Z0-9._-] as the URL path, kafka://host:9092/topic", topic)
	}
	if u.Fragment != "" {
		return "", errors.New("a kafka URL takes no #fragment")
	}
	return topic, nil
}

// Check checks the SASL options that only make sense together, once every
// parameter is applied, and that the password can be found: a missing one
// is a usage error before anything is opened, since no retry can fix it.
func (c *Conn) Check() error {
	switch {
	case c.SASL == "" && (c.User != "" || c.Password != "" || c.PasswordEnv != ""):
		return errors.New("user and password need sasl=plain, scram-sha-256 or scram-sha-512")
	case c.SASL != "" && c.User == "":
		return fmt.Errorf("sasl=%s needs user=", c.SASL)
	case c.SASL != "" && c.Password == "" && c.PasswordEnv == "":
		c.PasswordEnv = DefaultPasswordEnv
	}
	_, err := c.saslPassword()
	return err
}

// ApplyParam sets one connection parameter; false when key is not one.
func (c *Conn) ApplyParam(key, val string) (bool, error) {
	var err error
	switch key {
	case "tls":
		c.TLS, err = strconv.ParseBool(val)
		if err != nil {
			err = fmt.Errorf("want true or false, got %q", val)
		}
	case "sasl":
		err = OneOf(&c.SASL, val, "plain", "scram-sha-256", "scram-sha-512")
	case "user":
		if val == "" {
			err = errors.New("must not be empty")
		}
		c.User = val
	case "password":
		// Never echo the value.
		if val == "" {
			err = errors.New("must not be empty")
		}
		c.Password = Secret(val)
	case "password_env":
		if val == "" {
			err = errors.New("must not be empty")
		}
		c.PasswordEnv = val
	default:
		return false, nil
	}
	return true, err
}

// OneOf sets *dst to val when val is one of allowed.
func OneOf(dst *string, val string, allowed ...string) error {
	for _, a := range allowed {
		if val == a {
			*dst = val
			return nil
		}
	}
	return fmt.Errorf("want one of %s, got %q", strings.Join(allowed, ", "), val)
}

// Opts are the client options that reach the cluster: seed brokers, the
// dialer or TLS, and SASL.
func (c *Conn) Opts() ([]kgo.Opt, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(c.Brokers...), kgo.ClientID("spillway")}
	switch {
	case c.Dial != nil:
		opts = append(opts, kgo.Dialer(c.Dial))
	case c.TLS:
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	if c.SASL != "" {
		m, err := c.saslMechanism()
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// saslPassword is the password SASL logs in with: ?password=, or else the
// variable PasswordEnv names. Without SASL there is none to find.
func (c *Conn) saslPassword() (string, error) {
	if c.SASL == "" || c.Password != "" {
		return string(c.Password), nil
	}
	if pass := os.Getenv(c.PasswordEnv); pass != "" {
		return pass, nil
	}
	return "", fmt.Errorf("sasl=%s needs a password: set %s (or name another variable with password_env=)", c.SASL, c.PasswordEnv)
}

func (c *Conn) saslMechanism() (sasl.Mechanism, error) {
	pass, err := c.saslPassword()
	if err != nil {
		return nil, err
	}
	switch c.SASL {
	case "scram-sha-256":
		return scram.Auth{User: c.User, Pass: pass}.AsSha256Mechanism(), nil
	case "scram-sha-512":
		return scram.Auth{User: c.User, Pass: pass}.AsSha512Mechanism(), nil
	}
	return plain.Auth{User: c.User, Pass: pass}.AsMechanism(), nil
}
