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
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spillwayhq/spillway/spool"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"github.com/valyala/fastjson"
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
		err = setNumber(&o.Linger, lingerSetting, val)
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

// kafkaForwarder produces each event as one record to one topic. franz-go
// batches, compresses and pipelines per partition; its producer is
// idempotent with acks=all, so its own retries of a produce request never
// duplicate or reorder records within a partition.
//
// Per-key order across batches needs one batch in flight at a time, which
// is why the kind's concurrency defaults to 1 (see ParseDestination):
// Send stops lingering once its records are buffered, and franz-go still
// sends to every partition leader at once.
type kafkaForwarder struct {
	cl      *kgo.Client
	topic   string
	brokers string // for error messages
	key     string
	timeout time.Duration
	linger  time.Duration
	parsers fastjson.ParserPool
	// topicOK is set once a record was produced, and cleared by a failure
	// that may mean the topic went away: until then every Send checks the
	// topic first (see checkTopic).
	topicOK atomic.Bool

	mu        sync.Mutex
	closed    bool           // under mu
	wg        sync.WaitGroup // ProduceSync calls, some outliving their Send
	closeOnce sync.Once
	closeErr  error
}

var _ Forwarder = (*kafkaForwarder)(nil)

// newKafka builds the client. It does not dial: an unreachable cluster is a
// failing destination, retried, not a start-up error. A missing SASL
// password is one, since no retry can fix it.
func newKafka(d Destination) (*kafkaForwarder, error) {
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
	}
	switch o.Compression {
	case "zstd", "":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.ZstdCompression(), kgo.NoCompression()))
	case "lz4":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.Lz4Compression(), kgo.NoCompression()))
	case "snappy":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.SnappyCompression(), kgo.NoCompression()))
	case "gzip":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.GzipCompression(), kgo.NoCompression()))
	case "none":
		opts = append(opts, kgo.ProducerBatchCompression(kgo.NoCompression()))
	}
	if o.Acks == "leader" {
		// Idempotence needs acks=all.
		opts = append(opts, kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	} else {
		opts = append(opts, kgo.RequiredAcks(kgo.AllISRAcks()))
	}
	opts = append(opts, kgo.ProducerLinger(o.Linger))
	if o.TLS {
		opts = append(opts, kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12}))
	}
	if o.SASL != "" {
		pass, err := o.saslPassword()
		if err != nil {
			return nil, fmt.Errorf("destination %s: %w", d.Name, err)
		}
		switch o.SASL {
		case "plain":
			opts = append(opts, kgo.SASL(plain.Auth{User: o.User, Pass: pass}.AsMechanism()))
		case "scram-sha-256":
			opts = append(opts, kgo.SASL(scram.Auth{User: o.User, Pass: pass}.AsSha256Mechanism()))
		case "scram-sha-512":
			opts = append(opts, kgo.SASL(scram.Auth{User: o.User, Pass: pass}.AsSha512Mechanism()))
		}
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		// kgo's errors name options, never their values.
		return nil, fmt.Errorf("destination %s: kafka client: %w", d.Name, err)
	}
	return &kafkaForwarder{
		cl:      cl,
		topic:   o.Topic,
		brokers: strings.Join(o.Brokers, ","),
		key:     o.Key,
		timeout: d.Timeout,
		linger:  o.Linger,
	}, nil
}

func (f *kafkaForwarder) Kind() string { return KindKafka }

// Send produces one record per event and returns once Kafka acknowledged
// every one (acks=all: every in-sync replica has it), or with the records
// that failed, one entry per record:
//
//   - retriable Kafka errors and timeouts: *RetryableError;
//   - a missing topic, refused authorization or authentication, a codec
//     the broker lacks: *MisconfiguredError, never dead-lettered;
//   - a record too large for the producer or the broker, or refused by
//     the broker's validation: *RejectedError for the records of that
//     Kafka batch, which the dispatcher splits until the culprit is alone.
//
// Records failing with one error value share one error value, so the
// dispatcher retries or splits them together.
func (f *kafkaForwarder) Send(ctx context.Context, batch []spool.Record) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("produce: %w", err)
	}
	// A produce abandoned at the hard timeout below may still hold its
	// records after Send returns, and the dispatcher reuses a batch's
	// memory then: the records get data of their own.
	size := 0
	for i := range batch {
		size += len(batch[i].Data)
	}
	batch = slices.Clone(batch)
	moveData(make([]byte, 0, size), batch)
	recs := make([]*kgo.Record, len(batch))
	for i := range batch {
		recs[i] = f.record(&batch[i])
	}

	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return &RetryableError{Err: errors.New("produce: forwarder closed")}
	}
	f.wg.Add(1)
	f.mu.Unlock()

	// franz-go fails the records not yet sent once pctx ends; records in
	// a request already sent wait for the broker's answer, which comes
	// within ProduceRequestTimeout. hard bounds the wait for a broker that
	// never answers; the ProduceSync left behind ends by Close.
	pctx, cancel := context.WithTimeout(ctx, f.timeout)
	if !f.topicOK.Load() {
		if err := f.checkTopic(pctx); err != nil {
			cancel()
			f.wg.Done()
			return err
		}
	}
	done := make(chan kgo.ProduceResults, 1)
	go func() {
		defer f.wg.Done()
		defer cancel()
		done <- f.produce(pctx, recs)
	}()
	hard := time.NewTimer(2*f.timeout + time.Second)
	defer hard.Stop()

	var results kgo.ProduceResults
	select {
	case results = <-done:
	case <-ctx.Done():
		return fmt.Errorf("produce: %w", ctx.Err())
	case <-hard.C:
		f.topicOK.Store(false)
		return &RetryableError{Err: fmt.Errorf("produce to %s at %s: no answer within %v: %w",
			f.topic, f.brokers, 2*f.timeout+time.Second, context.DeadlineExceeded)}
	}
	if ctx.Err() != nil && results.FirstErr() != nil {
		// Records failed because the caller gave up: not the cluster's
		// doing, and the dispatcher leaves the batch for a restart.
		return fmt.Errorf("produce: %w", ctx.Err())
	}

	index := make(map[*kgo.Record]int, len(recs))
	for i, r := range recs {
		index[r] = i
	}
	var (
		errs  []error
		seen  []error // distinct underlying errors, in order of appearance
		wraps []error // their classified wrappers
		ok    bool
	)
	for _, res := range results {
		if res.Err == nil {
			ok = true
			continue
		}
		if errs == nil {
			errs = make([]error, len(recs))
		}
		j := -1
		for k, e := range seen {
			if sameError(e, res.Err) {
				j = k
				break
			}
		}
		if j < 0 {
			seen = append(seen, res.Err)
			wraps = append(wraps, f.classify(res.Err))
			j = len(seen) - 1
		}
		errs[index[res.Record]] = wraps[j]
	}
	f.topicOK.Store(ok && !slices.ContainsFunc(wraps, func(err error) bool {
		var mis *MisconfiguredError
		return errors.As(err, &mis) || errors.Is(err, context.DeadlineExceeded)
	}))
	if errs == nil {
		return nil
	}
	return &BatchError{Errs: errs}
}

// produce produces recs and waits for every one's result. ProduceSync
// stops the linger of the partitions it wrote to, but only of those the
// client knew: until the topic's partitions are loaded (the first Send
// after start) its records lingered for all of linger, past the timeout
// when linger is longer, and were produced once more by the retry. Then
// Flush stops every linger instead, other Sends' too.
func (f *kafkaForwarder) produce(ctx context.Context, recs []*kgo.Record) kgo.ProduceResults {
	if leader, _, _ := f.cl.PartitionLeader(f.topic, 0); f.linger == 0 || leader >= 0 {
		return f.cl.ProduceSync(ctx, recs...)
	}
	var wg sync.WaitGroup
	results := make(kgo.ProduceResults, 0, len(recs))
	wg.Add(len(recs))
	for _, r := range recs {
		// franz-go calls one client's promises one at a time.
		f.cl.Produce(ctx, r, func(r *kgo.Record, err error) {
			results = append(results, kgo.ProduceResult{Record: r, Err: err})
			wg.Done()
		})
	}
	_ = f.cl.Flush(ctx) // on ctx's end the records fail, and results say so
	wg.Wait()
	return results
}

// checkTopic asks the cluster whether the topic exists and may be written.
// franz-go waits on a topic it cannot find, reloading metadata every few
// seconds, longer than a produce timeout: the records would time out, and
// a missing topic would look like a slow cluster instead of the
// misconfiguration it is. It returns a *MisconfiguredError, or nil when
// the topic is there or the question got no clear answer, in which case
// producing finds out.
func (f *kafkaForwarder) checkTopic(ctx context.Context) error {
	req := kmsg.NewPtrMetadataRequest()
	t := kmsg.NewMetadataRequestTopic()
	t.Topic = kmsg.StringPtr(f.topic)
	req.Topics = append(req.Topics, t)
	req.AllowAutoTopicCreation = false
	resp, err := req.RequestWith(ctx, f.cl)
	if err == nil && len(resp.Topics) == 1 {
		err = kerr.ErrorForCode(resp.Topics[0].ErrorCode)
	}
	if err == nil {
		return nil
	}
	var mis *MisconfiguredError
	if cerr := f.classify(err); errors.As(cerr, &mis) {
		return cerr
	}
	return nil
}

// classify maps a record's produce error to what the dispatcher acts on.
func (f *kafkaForwarder) classify(err error) error {
	switch {
	case errors.Is(err, kerr.MessageTooLarge), errors.Is(err, kerr.RecordListTooLarge),
		errors.Is(err, kerr.InvalidRecord):
		return &RejectedError{Err: fmt.Errorf("produce to %s: %w", f.topic, err)}
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID),
		errors.Is(err, kerr.InvalidTopicException):
		return &MisconfiguredError{Err: fmt.Errorf("produce to %s: topic does not exist (spillway never creates it): %w", f.topic, err)}
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed),
		errors.Is(err, kerr.TransactionalIDAuthorizationFailed), errors.Is(err, kerr.SaslAuthenticationFailed),
		errors.Is(err, kerr.UnsupportedSaslMechanism), errors.Is(err, kerr.IllegalSaslState),
		errors.Is(err, kerr.UnsupportedCompressionType), errors.Is(err, kerr.PolicyViolation):
		return &MisconfiguredError{Err: fmt.Errorf("produce to %s: %w", f.topic, err)}
	case errors.Is(err, context.DeadlineExceeded):
		return &RetryableError{Err: fmt.Errorf("produce to %s at %s: not acknowledged within %v: %w",
			f.topic, f.brokers, f.timeout, err)}
	}
	return &RetryableError{Err: fmt.Errorf("produce to %s: %w", f.topic, err)}
}

// record builds the Kafka record of one event: the event's JSON as the
// value, the key from the configured field, and headers naming its type,
// messageId and write key for consumers that route without parsing.
func (f *kafkaForwarder) record(r *spool.Record) *kgo.Record {
	rec := &kgo.Record{Topic: f.topic, Value: r.Data}
	p := f.parsers.Get()
	defer f.parsers.Put(p)
	v, err := p.ParseBytes(r.Data)
	if err != nil {
		// The proxy stored valid JSON; should a record be otherwise, it
		// still goes, unkeyed: a consumer judges it, nothing is lost.
		return rec
	}
	userID, anonID := idField(v, "userId"), idField(v, "anonymousId")
	switch f.key {
	case KafkaKeyMessageID:
		rec.Key = idField(v, "messageId")
	case KafkaKeyAnonymousID:
		rec.Key = firstNonEmpty(anonID, userID)
	default:
		rec.Key = firstNonEmpty(userID, anonID)
	}
	rec.Headers = make([]kgo.RecordHeader, 0, 3)
	if t := v.GetStringBytes("type"); t != nil {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "type", Value: append([]byte(nil), t...)})
	}
	if id := idField(v, "messageId"); id != nil {
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "messageId", Value: id})
	}
	if r.WriteKey != "" {
		// A consumer relaying to Segment (a central spillway) needs the
		// key each event came with, as the segment kind uses it.
		rec.Headers = append(rec.Headers, kgo.RecordHeader{Key: "writeKey", Value: []byte(r.WriteKey)})
	}
	return rec
}

// idField returns a copy of an id field: a string as is, a number (some
// SDKs send numeric user ids) as its JSON text; nil when absent or empty.
func idField(v *fastjson.Value, name string) []byte {
	f := v.Get(name)
	if f == nil {
		return nil
	}
	switch f.Type() {
	case fastjson.TypeString:
		b, _ := f.StringBytes()
		if len(b) == 0 {
			return nil
		}
		return append([]byte(nil), b...)
	case fastjson.TypeNumber:
		return f.MarshalTo(nil)
	}
	return nil
}

func firstNonEmpty(a, b []byte) []byte {
	if len(a) > 0 {
		return a
	}
	return b
}

// Close flushes what is still buffered, within the destination's timeout,
// then closes the client, which fails whatever is left: records of Sends
// that had returned without success, so never acknowledged in the spool
// and sent again after a restart. Later calls return the first's result.
func (f *kafkaForwarder) Close(ctx context.Context) error {
	f.closeOnce.Do(func() {
		f.mu.Lock()
		f.closed = true
		f.mu.Unlock()

		fctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		// Close does not flush (franz-go's producer.go), so flush first.
		if err := f.cl.Flush(fctx); err != nil {
			f.closeErr = fmt.Errorf("flush kafka producer: %w (unacknowledged events stay in the spool)", err)
		}
		f.cl.Close()
		f.wg.Wait()
	})
	return f.closeErr
}
