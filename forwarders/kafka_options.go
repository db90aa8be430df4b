package forwarders

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
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// KindKafka is kafka://host:9092[,host2:9092]/topic: one Kafka record per
// event, produced with franz-go.
const KindKafka = "kafka"

// Kafka record keys (?key=): the event field whose value keys the record,
// so that one user's events go to one partition, in order.
const (
	KafkaKeyUserID      = "userId"      // userId, else anonymousId (the default)
	KafkaKeyAnonymousID = "anonymousId" // anonymousId, else userId
	KafkaKeyMessageID   = "messageId"   // spreads one user's events over partitions
)

// DefaultKafkaPasswordEnv is the environment variable the SASL password is
// read from unless ?password_env= names another.
const DefaultKafkaPasswordEnv = "SPILLWAY_KAFKA_PASSWORD"

// KafkaOptions are the kafka kind's own settings, from its URL. The zero
// value of each field means the default given.
type KafkaOptions struct {
	Brokers []string // seed brokers, host:port; from the URL's host part
	Topic   string   // from the URL's path; must exist (topics are never auto-created)
	// Key is KafkaKeyUserID (default), KafkaKeyAnonymousID or
	// KafkaKeyMessageID. An event without the field, or its fallback, gets
	// no key and a partition chosen for batching.
	Key string
	// Compression is zstd (default), lz4, snappy, gzip or none.
	Compression string
	// Acks is all (default: every in-sync replica, with the idempotent
	// producer) or leader (the leader alone, idempotence off).
	Acks string
	// Linger is how long a partition waits for more records before a
	// produce request goes; default 0. A Send stops the lingering of the
	// partitions it wrote to once its records are buffered, so a linger
	// only gathers the records of concurrent Sends (concurrency > 1).
	Linger time.Duration
	TLS    bool   // dial the brokers with TLS 1.2+ (system roots)
	SASL   string // "" (none), plain, scram-sha-256 or scram-sha-512
	User   string // SASL user name
	// Password is the SASL password given in the URL (?password=). It is
	// redacted wherever it is printed; prefer PasswordEnv, since a URL
	// shows in process listings and manifests.
	Password Secret
	// PasswordEnv names the environment variable holding the SASL password
	// when Password is empty; default DefaultKafkaPasswordEnv. It is read
	// when the forwarder is built.
	PasswordEnv string
	// Dial, when not nil, connects to the brokers instead of the system's
	// network, with TLS off: for tests on an in-memory network and for
	// embedding. Not settable from the URL.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
}

// saslPassword is the password SASL logs in with: ?password=, or else the
// variable PasswordEnv names. Without SASL there is none to find.
func (o KafkaOptions) saslPassword() (string, error) {
	if o.SASL == "" || o.Password != "" {
		return string(o.Password), nil
	}
	if pass := os.Getenv(o.PasswordEnv); pass != "" {
		return pass, nil
	}
	return "", fmt.Errorf("sasl=%s needs a password: set %s (or name another variable with password_env=)", o.SASL, o.PasswordEnv)
}

// Secret is a string that prints as [redacted], so that a password kept in
// a struct never reaches a log or an error through fmt or slog.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return `"[redacted]"` }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }
func (Secret) LogValue() slog.Value         { return slog.StringValue("[redacted]") }

// kafkaMaxBatchBytes is franz-go's default ProducerBatchMaxBytes, Kafka's
// max.message.bytes default less its overhead.
const kafkaMaxBatchBytes = 1_000_012

var kafkaTopicRE = regexp.MustCompile(`^[a-zA-Z0-9._-]{1,249}$`)

// parseKafkaURL sets the brokers and topic from kafka://h1:9092,h2:9092/topic
// and checks the options that only make sense together. Parameters are
// already applied.
func (dest *Destination) parseKafkaURL(u *url.URL) error {
	if u.User != nil {
		return errors.New("a kafka URL takes credentials as ?user= and password_env= (or password=), not in the URL")
	}
	if u.Opaque != "" || u.Host == "" {
		return errors.New("kafka URL has no broker, write kafka://host:9092[,host2:9092]/topic")
	}
	o := &dest.Kafka
	o.Brokers = nil
	for _, b := range strings.Split(u.Host, ",") {
		if b == "" {
			return fmt.Errorf("empty broker address in %q", u.Host)
		}
		if _, port, err := net.SplitHostPort(b); err != nil {
			b = net.JoinHostPort(b, "9092")
		} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("broker %q: bad port", b)
		}
		o.Brokers = append(o.Brokers, b)
	}
	o.Topic = strings.TrimPrefix(u.Path, "/")
	if !kafkaTopicRE.MatchString(o.Topic) || o.Topic == "." || o.Topic == ".." {
		return fmt.Errorf("kafka topic %q: want 1-249 of [a-zA-Z0-9._-] as the URL path, kafka://host:9092/topic", o.Topic)
	}
	if u.Fragment != "" {
		return errors.New("a kafka URL takes no #fragment")
	}
	if o.Key == "" {
		o.Key = KafkaKeyUserID
	}
	if o.Compression == "" {
		o.Compression = "zstd"
	}
	if o.Acks == "" {
		o.Acks = "all"
	}
	switch {
	case o.SASL == "" && (o.User != "" || o.Password != "" || o.PasswordEnv != ""):
		return errors.New("user and password need sasl=plain, scram-sha-256 or scram-sha-512")
	case o.SASL != "" && o.User == "":
		return fmt.Errorf("sasl=%s needs user=", o.SASL)
	case o.SASL != "" && o.Password == "" && o.PasswordEnv == "":
		o.PasswordEnv = DefaultKafkaPasswordEnv
	}
	// Looked for now as well as when the forwarder is built, so that a
	// missing password is a usage error before the spool is opened.
	if _, err := o.saslPassword(); err != nil {
		return err
	}
	// Only the brokers and topic: our parameters are not the broker's, and
	// the password must never be part of what String prints.
	dest.URL = (&url.URL{Scheme: "kafka", Host: u.Host, Path: "/" + o.Topic}).String()
	return nil
}

// applyKafkaParam sets one kafka option; false when key is not one.
func (dest *Destination) applyKafkaParam(key, val string) (bool, error) {
	o := &dest.Kafka
	oneOf := func(dst *string, allowed ...string) error {
		for _, a := range allowed {
			if val == a {
				*dst = val
				return nil
			}
		}
		return fmt.Errorf("want one of %s, got %q", strings.Join(allowed, ", "), val)
	}
	var err error
	switch key {
	case "key":
		err = oneOf(&o.Key, KafkaKeyUserID, KafkaKeyAnonymousID, KafkaKeyMessageID)
	case "compression":
		err = oneOf(&o.Compression, "zstd", "lz4", "snappy", "gzip", "none")
	case "acks":
		err = oneOf(&o.Acks, "all", "leader")
	case "linger":
		err = field{lingerSetting, &o.Linger}.parse(val)
	case "tls":
		o.TLS, err = strconv.ParseBool(val)
		if err != nil {
			err = fmt.Errorf("want true or false, got %q", val)
		}
	case "sasl":
		err = oneOf(&o.SASL, "plain", "scram-sha-256", "scram-sha-512")
	case "user":
		if val == "" {
			err = errors.New("must not be empty")
		}
		o.User = val
	case "password":
		// Never echo the value.
		if val == "" {
			err = errors.New("must not be empty")
		}
		o.Password = Secret(val)
	case "password_env":
		if val == "" {
			err = errors.New("must not be empty")
		}
		o.PasswordEnv = val
	default:
		return false, nil
	}
	return true, err
}

// kafkaClientOpts are the client options of d.
func kafkaClientOpts(d Destination) ([]kgo.Opt, error) {
	o := d.Kafka
	opts := []kgo.Opt{
		kgo.SeedBrokers(o.Brokers...),
		kgo.ClientID("spillway"),
		kgo.DefaultProduceTopic(o.Topic),
		// A Kafka record batch (one partition's share of a request)
		// holds at most batch_bytes, and never more than franz-go's
		// default, just under the brokers' default max.message.bytes
		// (1 MB): past the topic's limit the broker refuses whole batches.
		kgo.ProducerBatchMaxBytes(int32(min(d.BatchBytes, kafkaMaxBatchBytes))),
		// The broker answers a produce within the destination's timeout
		// (acks=all waits for the replicas): past it, we retry.
		kgo.ProduceRequestTimeout(d.Timeout),
		// Topics are never auto-created (kgo's AllowAutoTopicCreation
		// stays off): a missing topic is a misconfiguration, which
		// checkTopic reports at once; this bounds franz-go's own wait for
		// a topic deleted while we produce.
		kgo.UnknownTopicRetries(3),
		// A partition whose leader moved without telling (a produce
		// answered NOT_LEADER, no new leader named) waits for new
		// metadata: once a second at most, not franz-go's 5s, which
		// would outlast a produce timeout or two. The Java client waits
		// retry.backoff.ms, 100ms.
		kgo.MetadataMinAge(time.Second),
		// Room for every batch of the destination in flight.
		kgo.MaxBufferedRecords(max(d.BatchEvents*d.Concurrency*2, 10_000)),
		kafkaCompression(o.Compression),
		kgo.ProducerLinger(o.Linger),
	}
	if o.Acks == "leader" {
		// Idempotence needs acks=all.
		opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	} else {
		opts = append(opts, kgo.RequiredAcks(kgo.AllISRAcks()))
	}
	switch {
	case o.Dial != nil:
		opts = append(opts, kgo.Dialer(o.Dial))
	case o.TLS:
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	if o.SASL != "" {
		m, err := saslMechanism(o)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// kafkaCompression is the codec option of ?compression=; each falls back
// to none for a broker without it.
func kafkaCompression(name string) kgo.Opt {
	switch name {
	case "lz4":
		return kgo.ProducerBatchCompression(kgo.Lz4Compression(), kgo.NoCompression())
	case "snappy":
		return kgo.ProducerBatchCompression(kgo.SnappyCompression(), kgo.NoCompression())
	case "gzip":
		return kgo.ProducerBatchCompression(kgo.GzipCompression(), kgo.NoCompression())
	case "none":
		return kgo.ProducerBatchCompression(kgo.NoCompression())
	}
	return kgo.ProducerBatchCompression(kgo.ZstdCompression(), kgo.NoCompression())
}

func saslMechanism(o KafkaOptions) (sasl.Mechanism, error) {
	pass, err := o.saslPassword()
	if err != nil {
		return nil, err
	}
	switch o.SASL {
	case "scram-sha-256":
		return scram.Auth{User: o.User, Pass: pass}.AsSha256Mechanism(), nil
	case "scram-sha-512":
		return scram.Auth{User: o.User, Pass: pass}.AsSha512Mechanism(), nil
	}
	return plain.Auth{User: o.User, Pass: pass}.AsMechanism(), nil
}
