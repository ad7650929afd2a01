// Package store persists the supervisor's ledger records (one per subOS:
// its allocation, VMM process identity and create request) and an
// append-only audit log of events, in a bbolt file.
//
// The file has three buckets: "records" maps a subOS name to its Record as
// JSON; "events" maps a big-endian uint64 sequence number to an Event as
// JSON; "quarantine" maps a big-endian uint64 sequence number to a
// Quarantined record (one the supervisor could not use, kept verbatim).
// Events are only ever added, with sequence numbers that increase across
// reopenings; nothing rewrites or removes them.
package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"rainforest/ledger"
)

// Bucket names.
const (
	RecordsBucket    = "records"
	EventsBucket     = "events"
	QuarantineBucket = "quarantine"
)

// Phases of a record: where the subOS is in its lifecycle. A record
// written before phases existed has none, which means PhaseRunning.
const (
	PhaseRunning    = "running"    // the VMM runs (or ran) under this record
	PhaseCreating   = "creating"   // written before create's first side effect
	PhaseDestroying = "destroying" // written before destroy's first side effect
)

// LockTimeout is how long Open waits for another process (another
// supervisor) to release the file's lock.
const LockTimeout = time.Second

// Errors callers branch on.
var (
	ErrNotFound = errors.New("store: no such record")
	ErrLocked   = errors.New("store: file is locked by another process")
	ErrCorrupt  = errors.New("store: corrupt entry")
)

// Record is what the supervisor keeps about one subOS.
type Record struct {
	Allocation ledger.Allocation `json:"allocation"`
	PID        int               `json:"pid"`            // the subOS's VMM process
	StartTime  uint64            `json:"start_time"`     // /proc/PID/stat field 22, tells a reused PID apart
	Spec       json.RawMessage   `json:"spec,omitempty"` // the create request
	Created    time.Time         `json:"created"`
	// Phase is one of the Phase constants; "" reads as PhaseRunning.
	Phase string `json:"phase,omitempty"`
	// Intent is the change the supervisor was about to make when it wrote
	// the record (its own format), absent when none is under way.
	Intent json.RawMessage `json:"intent,omitempty"`
}

// Running says whether r is in PhaseRunning (or has no phase).
func (r Record) Running() bool { return r.Phase == "" || r.Phase == PhaseRunning }

// Unreadable is a record whose bytes do not decode.
type Unreadable struct {
	Name string
	Err  error // wraps ErrCorrupt
}

// Quarantined is a record taken out of use: its bytes as they were, why,
// and when.
type Quarantined struct {
	Seq    uint64    `json:"seq"`
	Name   string    `json:"name"`
	Reason string    `json:"reason"`
	Time   time.Time `json:"time"`
	Raw    []byte    `json:"raw"` // the record's stored bytes, verbatim
}

// Event is one entry of the audit log.
type Event struct {
	Seq      uint64        `json:"seq"`  // assigned by Append
	Time     time.Time     `json:"time"` // set by Append when zero
	Who      string        `json:"who"`  // who asked: "cli", "api:<peer>", "supervisor"...
	What     string        `json:"what"` // what happened: "create", "destroy", "adopt"...
	Name     string        `json:"name,omitempty"`
	Duration time.Duration `json:"duration,omitempty"`
	Detail   string        `json:"detail,omitempty"`
}

// Store is an open store file. It is safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens or creates the store file at path. It fails with ErrLocked
// when another process holds the file open.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: LockTimeout})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return nil, fmt.Errorf("%w: %s", ErrLocked, path)
		}
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range []string{RecordsBucket, EventsBucket, QuarantineBucket} {
			if _, err := tx.CreateBucketIfNotExists([]byte(b)); err != nil {
				return fmt.Errorf("bucket %s: %w", b, err)
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Path returns the file's path.
func (s *Store) Path() string { return s.db.Path() }

// Tx is one read-write transaction of Update. It is valid only inside the
// function given to Update.
type Tx struct {
	tx *bolt.Tx
}

// Update runs fn in one transaction: everything fn puts, deletes and
// appends is committed together when fn returns nil, and nothing of it when
// fn returns an error (returned as is) or panics.
func (s *Store) Update(fn func(tx *Tx) error) error {
	return s.db.Update(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) })
}

// view runs fn in a read-only transaction.
func (s *Store) view(fn func(tx *Tx) error) error {
	return s.db.View(func(btx *bolt.Tx) error { return fn(&Tx{tx: btx}) })
}

// Put creates or replaces the record of r.Allocation.Name.
func (s *Store) Put(r Record) error {
	return s.Update(func(tx *Tx) error { return tx.Put(r) })
}

// Delete removes name's record; ErrNotFound when there is none.
func (s *Store) Delete(name string) error {
	return s.Update(func(tx *Tx) error { return tx.Delete(name) })
}

// Get returns name's record; ErrNotFound when there is none.
func (s *Store) Get(name string) (r Record, err error) {
	err = s.view(func(tx *Tx) error {
		r, err = tx.Get(name)
		return err
	})
	return r, err
}

// Records returns every record, sorted by name.
func (s *Store) Records() (rs []Record, err error) {
	err = s.view(func(tx *Tx) error {
		rs, err = tx.Records()
		return err
	})
	return rs, err
}

// Load returns every record that decodes, sorted by name, and the names of
// those that do not: one bad record does not hide the others.
func (s *Store) Load() (rs []Record, bad []Unreadable, err error) {
	err = s.view(func(tx *Tx) error {
		return tx.records().ForEach(func(k, v []byte) error {
			r, err := decodeRecord(k, v)
			if err != nil {
				bad = append(bad, Unreadable{Name: string(k), Err: err})
				return nil
			}
			rs = append(rs, r)
			return nil
		})
	})
	return rs, bad, err
}

// Quarantine moves name's record, its bytes unchanged, out of the records
// into the quarantine with reason, in one transaction; ErrNotFound when
// there is none.
func (s *Store) Quarantine(name, reason string) error {
	return s.Update(func(tx *Tx) error {
		v := tx.records().Get([]byte(name))
		if v == nil {
			return fmt.Errorf("store: quarantine %q: %w", name, ErrNotFound)
		}
		q := tx.tx.Bucket([]byte(QuarantineBucket))
		seq, err := q.NextSequence()
		if err != nil {
			return fmt.Errorf("store: quarantine %q: %w", name, err)
		}
		e, err := json.Marshal(Quarantined{Seq: seq, Name: name, Reason: reason, Time: time.Now().UTC(), Raw: append([]byte(nil), v...)})
		if err != nil {
			return fmt.Errorf("store: quarantine %q: %w", name, err)
		}
		if err := q.Put(seqKey(seq), e); err != nil {
			return fmt.Errorf("store: quarantine %q: %w", name, err)
		}
		if err := tx.records().Delete([]byte(name)); err != nil {
			return fmt.Errorf("store: quarantine %q: %w", name, err)
		}
		return nil
	})
}

// Quarantined lists the quarantined records, oldest first. An entry that
// does not decode is listed with its bytes as Raw and a Reason saying so.
func (s *Store) Quarantined() (qs []Quarantined, err error) {
	err = s.view(func(tx *Tx) error {
		return tx.tx.Bucket([]byte(QuarantineBucket)).ForEach(func(k, v []byte) error {
			var q Quarantined
			if err := json.Unmarshal(v, &q); err != nil {
				q = Quarantined{Reason: fmt.Sprintf("%v: quarantine entry: %v", ErrCorrupt, err), Raw: append([]byte(nil), v...)}
			}
			if len(k) == 8 {
				q.Seq = binary.BigEndian.Uint64(k)
			}
			qs = append(qs, q)
			return nil
		})
	})
	return qs, err
}

// Append adds e to the audit log and returns its sequence number. It sets
// e.Seq, and e.Time to now when zero.
func (s *Store) Append(e Event) (seq uint64, err error) {
	err = s.Update(func(tx *Tx) error {
		seq, err = tx.Append(e)
		return err
	})
	return seq, err
}

// Events returns up to limit events (all when limit <= 0) with sequence
// numbers greater than since, oldest first. To page, pass the last Seq seen.
func (s *Store) Events(since uint64, limit int) (es []Event, err error) {
	err = s.view(func(tx *Tx) error {
		es, err = tx.Events(since, limit)
		return err
	})
	return es, err
}

// LastSeq returns the sequence number of the latest event, 0 when none.
func (s *Store) LastSeq() (seq uint64, err error) {
	err = s.view(func(tx *Tx) error {
		seq = tx.tx.Bucket([]byte(EventsBucket)).Sequence()
		return nil
	})
	return seq, err
}

func (t *Tx) records() *bolt.Bucket { return t.tx.Bucket([]byte(RecordsBucket)) }
func (t *Tx) events() *bolt.Bucket  { return t.tx.Bucket([]byte(EventsBucket)) }

// Put creates or replaces the record of r.Allocation.Name.
func (t *Tx) Put(r Record) error {
	name := r.Allocation.Name
	if name == "" || len(name) > bolt.MaxKeySize {
		return fmt.Errorf("store: put: bad record name %q", name)
	}
	v, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("store: put %q: %w", name, err)
	}
	if err := t.records().Put([]byte(name), v); err != nil {
		return fmt.Errorf("store: put %q: %w", name, err)
	}
	return nil
}

// Delete removes name's record; ErrNotFound when there is none.
func (t *Tx) Delete(name string) error {
	b := t.records()
	if b.Get([]byte(name)) == nil {
		return fmt.Errorf("store: delete %q: %w", name, ErrNotFound)
	}
	if err := b.Delete([]byte(name)); err != nil {
		return fmt.Errorf("store: delete %q: %w", name, err)
	}
	return nil
}

// Get returns name's record; ErrNotFound when there is none.
func (t *Tx) Get(name string) (Record, error) {
	v := t.records().Get([]byte(name))
	if v == nil {
		return Record{}, fmt.Errorf("store: get %q: %w", name, ErrNotFound)
	}
	return decodeRecord([]byte(name), v)
}

// Records returns every record, sorted by name.
func (t *Tx) Records() ([]Record, error) {
	var out []Record
	err := t.records().ForEach(func(k, v []byte) error {
		r, err := decodeRecord(k, v)
		if err != nil {
			return err
		}
		out = append(out, r)
		return nil
	})
	return out, err
}

func decodeRecord(k, v []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(v, &r); err != nil {
		return Record{}, fmt.Errorf("%w: record %q: %v", ErrCorrupt, k, err)
	}
	if r.Allocation.Name != string(k) {
		return Record{}, fmt.Errorf("%w: record %q names %q", ErrCorrupt, k, r.Allocation.Name)
	}
	// The value's bytes belong to the transaction; json.RawMessage was copied by Unmarshal.
	return r, nil
}

// Append adds e to the audit log and returns its sequence number. It sets
// e.Seq, and e.Time to now when zero.
func (t *Tx) Append(e Event) (uint64, error) {
	b := t.events()
	seq, err := b.NextSequence()
	if err != nil {
		return 0, fmt.Errorf("store: append: %w", err)
	}
	key := seqKey(seq)
	if b.Get(key) != nil {
		// The sequence went backwards: never overwrite the log.
		return 0, fmt.Errorf("%w: event %d already exists", ErrCorrupt, seq)
	}
	e.Seq = seq
	if e.Time.IsZero() {
		e.Time = time.Now().UTC()
	}
	v, err := json.Marshal(e)
	if err != nil {
		return 0, fmt.Errorf("store: append: %w", err)
	}
	if err := b.Put(key, v); err != nil {
		return 0, fmt.Errorf("store: append: %w", err)
	}
	return seq, nil
}

// Events returns up to limit events (all when limit <= 0) with sequence
// numbers greater than since, oldest first.
func (t *Tx) Events(since uint64, limit int) ([]Event, error) {
	if since == math.MaxUint64 {
		return nil, nil
	}
	var out []Event
	c := t.events().Cursor()
	for k, v := c.Seek(seqKey(since + 1)); k != nil; k, v = c.Next() {
		if limit > 0 && len(out) >= limit {
			break
		}
		if len(k) != 8 {
			return out, fmt.Errorf("%w: event key %x", ErrCorrupt, k)
		}
		var e Event
		if err := json.Unmarshal(v, &e); err != nil {
			return out, fmt.Errorf("%w: event %d: %v", ErrCorrupt, binary.BigEndian.Uint64(k), err)
		}
		e.Seq = binary.BigEndian.Uint64(k)
		out = append(out, e)
	}
	return out, nil
}

func seqKey(seq uint64) []byte {
	return binary.BigEndian.AppendUint64(make([]byte, 0, 8), seq)
}
