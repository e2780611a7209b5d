package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cascadeserve/cascadeserve/pkg/plan"
	"github.com/cascadeserve/cascadeserve/pkg/wire"
)

// ErrConflict marks a gear write that lost a compare-and-set: someone else
// wrote the key since the writer last read it.
var ErrConflict = errors.New("gear key changed by another writer")

// GearStore reads and writes the `gear` key of a pipeline's control bucket
// with compare-and-set. It remembers the revision of the last entry it read
// or wrote; a write is based on that revision, so a write never overwrites a
// value the writer has not seen. It is not safe for concurrent use.
type GearStore struct {
	kv    jetstream.KeyValue
	rev   uint64 // 0: the key does not exist (or was deleted)
	state wire.GearState
}

// NewGearStore returns a store over kv that has read nothing yet.
func NewGearStore(kv jetstream.KeyValue) *GearStore { return &GearStore{kv: kv} }

// Current returns the last value read or written and its revision (0 if the
// key does not exist).
func (s *GearStore) Current() (wire.GearState, uint64) { return s.state, s.rev }

// Refresh reads the key and reports whether its revision differs from the
// one the store knew, i.e. someone else wrote or deleted it.
func (s *GearStore) Refresh(ctx context.Context) (changed bool, err error) {
	e, err := s.kv.Get(ctx, wire.KeyGear)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		changed = s.rev != 0
		s.rev, s.state = 0, wire.GearState{}
		return changed, nil
	}
	if err != nil {
		return false, fmt.Errorf("read gear key: %w", err)
	}
	var st wire.GearState
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		// A value we cannot read is replaced on the next write.
		st = wire.GearState{Reason: fmt.Sprintf("unreadable value: %v", err)}
	}
	changed = e.Revision() != s.rev
	s.rev, s.state = e.Revision(), st
	return changed, nil
}

// Write stores st with compare-and-set on the revision the store knows: Create
// when the key did not exist, Update otherwise. A lost race returns an error
// wrapping ErrConflict; call Refresh and decide again.
func (s *GearStore) Write(ctx context.Context, st wire.GearState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode gear state: %w", err)
	}
	var rev uint64
	if s.rev == 0 {
		rev, err = s.kv.Create(ctx, wire.KeyGear, b)
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("create gear key: %w", ErrConflict)
		}
	} else {
		rev, err = s.kv.Update(ctx, wire.KeyGear, b, s.rev)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return fmt.Errorf("update gear key at revision %d: %w", s.rev, ErrConflict)
		}
	}
	if err != nil {
		return fmt.Errorf("write gear key: %w", err)
	}
	s.rev, s.state = rev, st
	return nil
}

// PutPlan stores p (as plan.Marshal encodes it) under the `plan` key unless
// the key already holds exactly those bytes. It returns the key's revision
// and whether it wrote.
func PutPlan(ctx context.Context, kv jetstream.KeyValue, p *plan.Plan) (revision uint64, changed bool, err error) {
	b, err := p.Marshal()
	if err != nil {
		return 0, false, fmt.Errorf("encode plan: %w", err)
	}
	e, err := kv.Get(ctx, wire.KeyPlan)
	switch {
	case err == nil && bytes.Equal(e.Value(), b):
		return e.Revision(), false, nil
	case err != nil && !errors.Is(err, jetstream.ErrKeyNotFound):
		return 0, false, fmt.Errorf("read plan key: %w", err)
	}
	rev, err := kv.Put(ctx, wire.KeyPlan, b)
	if err != nil {
		return 0, false, fmt.Errorf("put plan key: %w", err)
	}
	return rev, true, nil
}
