package forwarders

import (
	"net/url"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/spillwayhq/spillway/internal/kafkaconn"
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
const DefaultKafkaPasswordEnv = kafkaconn.DefaultPasswordEnv

// KafkaOptions are the kafka kind's own settings, from its URL. The zero
// value of each field means the default given.
type KafkaOptions struct {
	// Conn holds the brokers (the URL's host part), TLS and SASL, as the
	// Kafka source takes them too.
	kafkaconn.Conn
	Topic string // from the URL's path; must exist (topics are never auto-created)
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
}

// Secret is a string that prints as [redacted].
type Secret = kafkaconn.Secret

// kafkaMaxBatchBytes is franz-go's default ProducerBatchMaxBytes, Kafka's
// max.message.bytes default less its overhead.
const kafkaMaxBatchBytes = 1_000_012

// parseKafkaURL sets the brokers and topic from kafka://h1:9092,h2:9092/topic
// and checks the options that only make sense together. Parameters are
// already applied.
func (dest *Destination) parseKafkaURL(u *url.URL) error {
	o := &dest.Kafka
	topic, err := o.ParseURL(u)
	if err != nil {
		return err
	}
	o.Topic = topic
	if o.Key == "" {
		o.Key = KafkaKeyUserID
	}
	if o.Compression == "" {
		o.Compression = "zstd"
	}
	if o.Acks == "" {
		o.Acks = "all"
	}
	if err := o.Check(); err != nil {
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
	var err error
	switch key {
	case "key":
		err = kafkaconn.OneOf(&o.Key, val, KafkaKeyUserID, KafkaKeyAnonymousID, KafkaKeyMessageID)
	case "compression":
		err = kafkaconn.OneOf(&o.Compression, val, "zstd", "lz4", "snappy", "gzip", "none")
	case "acks":
		err = kafkaconn.OneOf(&o.Acks, val, "all", "leader")
	case "linger":
		err = field{lingerSetting, &o.Linger}.parse(val)
	default:
		return o.ApplyParam(key, val)
	}
	return true, err
}

// kafkaClientOpts are the client options of d.
func kafkaClientOpts(d Destination) ([]kgo.Opt, error) {
	o := d.Kafka
	opts, err := o.Opts()
	if err != nil {
		return nil, err
	}
	opts = append(opts,
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
	)
	if o.Acks == "leader" {
		// Idempotence needs acks=all.
		opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	} else {
		opts = append(opts, kgo.RequiredAcks(kgo.AllISRAcks()))
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
