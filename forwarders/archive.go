package forwarders

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"
)

// KindArchive is the object-storage archive: s3://BUCKET/PREFIX.
const KindArchive = "s3"

// Defaults of the archive kind, which override the global batching flags:
// an object per few minutes is what a query engine reads well, a batch per
// second is not.
const (
	DefaultArchiveBatchBytes = 64 << 20 // uncompressed events per object
	DefaultArchiveFlush      = 5 * time.Minute
	// DefaultArchiveTimeout bounds one upload: an object of tens of MiB
	// takes far longer than a batch of events.
	DefaultArchiveTimeout  = 2 * time.Minute
	defaultArchiveEndpoint = "s3.amazonaws.com"
	defaultArchiveRegion   = "us-east-1"
	// undeliveredDir is where a destination's fallback hand-off writes,
	// under the archive's prefix: PREFIX/undelivered/DESTINATION/...
	undeliveredDir = "undelivered"
)

// ArchiveOptions are the archive kind's own options.
type ArchiveOptions struct {
	Bucket string
	// Prefix is where objects go in the bucket, without a leading or
	// trailing slash; empty for the bucket's root.
	Prefix string
	// Endpoint is the store's host[:port]; default s3.amazonaws.com.
	Endpoint string
	// Region signs requests; default us-east-1. Set it for a bucket
	// elsewhere: looking it up would need s3:GetBucketLocation.
	Region string
	// PathStyle addresses the bucket in the path (host/bucket/key), as
	// MinIO and most self-hosted stores want, instead of bucket.host.
	PathStyle bool
	// PlainHTTP (?tls=false) talks to the endpoint without TLS.
	PlainHTTP bool
	// StorageClass is sent with each object (STANDARD_IA, ...); empty
	// leaves the bucket's default.
	StorageClass string
}

// setArchiveKind sets the kind's defaults, in place of the global flags'.
func (dest *Destination) setArchiveKind() {
	dest.Kind = KindArchive
	dest.BatchBytes = DefaultArchiveBatchBytes
	dest.BatchEvents = math.MaxInt32
	dest.Flush = DefaultArchiveFlush
	dest.Timeout = DefaultArchiveTimeout
	dest.Archive = ArchiveOptions{Endpoint: defaultArchiveEndpoint, Region: defaultArchiveRegion}
}

// applyArchiveParam sets one of the archive kind's own parameters; false
// when key is not one.
func (dest *Destination) applyArchiveParam(key, val string) (bool, error) {
	a := &dest.Archive
	switch key {
	case "endpoint":
		if val == "" || strings.Contains(val, "/") {
			return true, fmt.Errorf("want host or host:port, got %q", val)
		}
		a.Endpoint = val
	case "region":
		if val == "" {
			return true, errors.New("must not be empty")
		}
		a.Region = val
	case "path_style":
		b, err := strconv.ParseBool(val)
		if err != nil {
			return true, fmt.Errorf("want true or false, got %q", val)
		}
		a.PathStyle = b
	case "tls":
		b, err := strconv.ParseBool(val)
		if err != nil {
			return true, fmt.Errorf("want true or false, got %q", val)
		}
		a.PlainHTTP = !b
	case "storage_class":
		if val == "" {
			return true, errors.New("must not be empty")
		}
		a.StorageClass = val
	default:
		return false, nil
	}
	return true, nil
}

// setArchiveTarget reads the bucket and prefix from s3://BUCKET/PREFIX.
// Credentials come from the standard chain only: a URL is logged, shown by
// status and kept in shell history.
func (dest *Destination) setArchiveTarget(u *url.URL) error {
	if u.User != nil {
		return errors.New("an s3 URL takes no credentials: they come from the environment (AWS_ACCESS_KEY_ID, a credentials file, web identity or instance metadata)")
	}
	if u.Host == "" {
		return errors.New("s3 URL has no bucket, write s3://BUCKET/PREFIX")
	}
	prefix := strings.Trim(path.Clean("/"+u.Path), "/")
	if strings.Contains(prefix, "//") {
		return fmt.Errorf("bad prefix %q", u.Path)
	}
	dest.Archive.Bucket, dest.Archive.Prefix = u.Host, prefix
	dest.URL = "s3://" + u.Host + "/" + prefix
	return nil
}

// checkFallbacks checks that every ?fallback= names an archive destination
// other than its own.
func checkFallbacks(dests []Destination) error {
	kinds := make(map[string]string, len(dests))
	for _, d := range dests {
		kinds[d.Name] = d.Kind
	}
	for _, d := range dests {
		if d.Fallback == "" {
			continue
		}
		switch kind, ok := kinds[d.Fallback]; {
		case d.Kind == KindArchive:
			return fmt.Errorf("destination %s: an archive takes no fallback", d.Name)
		case !ok:
			return fmt.Errorf("destination %s: fallback %s is not a destination", d.Name, d.Fallback)
		case kind != KindArchive:
			return fmt.Errorf("destination %s: fallback %s is not an s3:// archive", d.Name, d.Fallback)
		}
	}
	return nil
}

// ObjectKey is the name of the object holding the events first..last,
// the first of which was received at received: PREFIX/dt=YYYY-MM-DD/
// hour=HH/<first>-<last>.ndjson.gz, the hour in UTC, so that query engines
// read the layout as Hive partitions. under, when not empty, is inserted
// after the prefix (undelivered/DESTINATION for a fallback hand-off).
func ObjectKey(prefix, under string, received time.Time, first, last uint64) string {
	received = received.UTC()
	name := fmt.Sprintf("dt=%s/hour=%02d/%020d-%020d.ndjson.gz", received.Format(time.DateOnly), received.Hour(), first, last)
	return path.Join(prefix, under, name)
}
