package main

import (
	"context"
	"fmt"
	"time"

	"rainforest/rfm/supervisor"
)

// AddShare plays the supervisor's for the CLI tests.
func (b *cliBackend) AddShare(_ context.Context, name string, s supervisor.ShareSpec) (supervisor.ShareSpec, error) {
	if _, err := b.Get(name); err != nil {
		return s, err
	}
	s.ID = "share1"
	return s, nil
}

func (b *cliBackend) RemoveShare(_ context.Context, name, share string, _ time.Duration) error {
	if _, err := b.Get(name); err != nil {
		return err
	}
	if share == "busy" {
		return fmt.Errorf("%w: share busy is mounted", supervisor.ErrInUse)
	}
	return nil
}
