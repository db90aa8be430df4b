package sources

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/spillwayhq/spillway/internal/kafkaconn"
)

// KindKafka is [NAME=]kafka://host:9092[,host2:9092]/topic?group=NAME.
const KindKafka = "kafka"

// DefaultSessionTimeout is how long Kafka waits for a silent relay before
// it gives the relay's partitions to the others: Kafka's own default.
const DefaultSessionTimeout = 45 * time.Second

// Source is one parsed --source.
type Source struct {
	// Name labels the source's metrics and log lines: NAME= when given,
	// else the topic.
	Name  string
	Kind  string // KindKafka
	Kafka KafkaOptions
}

// KafkaOptions are a Kafka source's settings, from its URL.
type KafkaOptions struct {
	// Conn holds the brokers, TLS and SASL, with the same parameters as
	// the Kafka destination's.
	kafkaconn.Conn
	Topic string // the URL's path
	Group string // ?group=, the consumer group; required
	// SessionTimeout (?session_timeout=) is how long the group waits for a
	// member that stopped heartbeating (killed, partitioned) before its
	// partitions go to the others; default DefaultSessionTimeout. The
	// broker bounds it (group.min.session.timeout.ms, 6 s by default).
	SessionTimeout time.Duration
}

var nameRE = regexp.MustCompile(`^[a-z0-9_-]+$`)

// ParseSources parses every --source, refusing two of one name.
func ParseSources(specs []string) ([]Source, error) {
	out := make([]Source, 0, len(specs))
	seen := map[string]bool{}
	for _, spec := range specs {
		s, err := ParseSource(spec)
		if err != nil {
			return nil, err
		}
		if seen[s.Name] {
			return nil, fmt.Errorf("source %s: name used twice; tell them apart with NAME=kafka://...", s.Name)
		}
		seen[s.Name] = true
		out = append(out, s)
	}
	return out, nil
}

// ParseSource parses [NAME=]kafka://BROKERS/TOPIC?group=GROUP and the
// connection parameters. Errors name the source, never its URL, which
// may hold a password.
func ParseSource(spec string) (Source, error) {
	name, raw := "", spec
	if !strings.HasPrefix(strings.ToLower(spec), "kafka://") {
		var ok bool
		if name, raw, ok = strings.Cut(spec, "="); !ok || !strings.Contains(raw, "://") {
			return Source{}, errors.New("want kafka://BROKERS/TOPIC?group=NAME (or NAME=kafka://...)")
		}
		if !nameRE.MatchString(name) {
			return Source{}, fmt.Errorf("source %q: name must match [a-z0-9_-]+", name)
		}
	}
	s, err := parseURL(raw)
	if name != "" {
		s.Name = name
	}
	if err != nil {
		if s.Name == "" {
			return Source{}, err
		}
		return Source{}, fmt.Errorf("source %s: %w", s.Name, err)
	}
	return s, nil
}

func parseURL(raw string) (Source, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// url.Error repeats the URL, which may hold a password.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return Source{}, fmt.Errorf("parse URL: %v", err)
	}
	if !strings.EqualFold(u.Scheme, "kafka") {
		return Source{}, fmt.Errorf("unsupported scheme %q (want kafka)", u.Scheme)
	}
	s := Source{Kind: KindKafka}
	o := &s.Kafka
	topic, err := o.ParseURL(u)
	if err != nil {
		return Source{}, err
	}
	o.Topic, s.Name = topic, topic
	if err := o.applyParams(u.Query()); err != nil {
		return s, err
	}
	if o.Group == "" {
		return s, errors.New("a kafka source needs ?group=NAME: the consumer group its relays share")
	}
	return s, o.Check()
}

func (o *KafkaOptions) applyParams(q url.Values) error {
	o.SessionTimeout = DefaultSessionTimeout
	for key, vals := range q {
		if len(vals) > 1 {
			return fmt.Errorf("%s: given twice", key)
		}
		val := vals[0]
		var err error
		switch key {
		case "group":
			if val == "" {
				err = errors.New("must not be empty")
			}
			o.Group = val
		case "session_timeout":
			o.SessionTimeout, err = time.ParseDuration(val)
			if err == nil && (o.SessionTimeout < 100*time.Millisecond || o.SessionTimeout > time.Hour) {
				err = fmt.Errorf("%v is out of range: want 100ms to 1h", o.SessionTimeout)
			}
		default:
			var ok bool
			if ok, err = o.ApplyParam(key, val); !ok {
				return fmt.Errorf("unknown parameter %q", key)
			}
		}
		if err != nil {
			return fmt.Errorf("%s: %w", key, err)
		}
	}
	return nil
}
