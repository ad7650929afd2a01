package rfcom

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"testing"

	"rainforest/ficm/board"
	"rainforest/ficm/control"
	"rainforest/ficm/endpoint"
	"rainforest/ficm/queue"
	"rainforest/ficm/ring"
	"rainforest/vmm/shmem"
)

// The C header names the same ABI as the Go packages: every integer
// #define in it must equal its Go constant, and every constant listed here
// must be in the header.
func TestHeaderConstants(t *testing.T) {
	want := map[string]int64{
		"RF_PCI_VENDOR_ID": shmem.VendorID, "RF_PCI_DEVICE_ID": shmem.DeviceID,
		"RF_PCI_CLASS_OTHER": shmem.ClassOther, "RF_PROTOCOL_FICM": shmem.ProtocolFICM,
		"RF_PROTOCOL_SEGMENT": shmem.ProtocolSegment,
		"RF_BAR_REGS":         shmem.RegBAR, "RF_BAR_MSIX": shmem.MSIXBAR, "RF_BAR_MEM": shmem.MemBAR,
		"RF_REG_BAR_SIZE": 0x1000,
		"RF_REG_ID":       shmem.RegID, "RF_REG_MAX_PEERS": shmem.RegMaxPeers, "RF_REG_INT_CONTROL": shmem.RegIntControl,
		"RF_REG_DOORBELL": shmem.RegDoorbell, "RF_REG_STATE": shmem.RegState, "RF_REG_INT_STATUS": shmem.RegIntStatus,
		"RF_MAX_PEERS":            shmem.MaxPeers,
		"RF_CAP_STATE_TABLE_SIZE": shmem.CapStateTableSize, "RF_CAP_RW_SIZE": shmem.CapRWSize,
		"RF_CAP_OUTPUT_SIZE": shmem.CapOutputSize, "RF_CAP_FLAGS": shmem.CapFlags, "RF_CAP_NAME": shmem.CapName,
		"RF_CAP_LENGTH": shmem.CapLength, "RF_CAP_FLAG_RW_READONLY": shmem.CapFlagRWReadOnly,
		"RF_NAME_SIZE": shmem.NameSize, "RF_PAGE_SIZE": endpoint.PageSize, "RF_STATE_ALIVE": StateAlive,
		"RF_FICM_INFO_PAGE_SIZE": InfoPageSize, "RF_FICM_SECTION_OFFSET": SectionOffset, "RF_FICM_SLOTS": Slots,
		"RF_FICM_VECTOR": Vector, "RF_FICM_SUPERVISOR": SupervisorPeer, "RF_FICM_MAX_PEERS": endpoint.MaxPeers,
		"RF_RING_SLOT_SIZE": ring.SlotSize, "RF_RING_HEADER_SIZE": ring.HeaderSize, "RF_RING_RX_SIZE": ring.RxSize,
		"RF_QUEUE_ARMED_OFFSET": queue.ArmedOffset, "RF_QUEUE_RX_SIZE": queue.RxSize,
		"RF_QUEUE_HEADER_SIZE": queue.HeaderSize, "RF_QUEUE_MAX_PAYLOAD": queue.MaxPayload,
		"RF_BOARD_MAGIC": board.Magic, "RF_BOARD_VERSION": board.Version, "RF_BOARD_MAX_ENTRIES": board.MaxEntries,
		"RF_BOARD_MAX_COMM_CORES": board.MaxCommCores, "RF_BOARD_ENTRIES_OFFSET": board.EntriesOffset,
		"RF_BOARD_ENTRY_SIZE": board.EntrySize, "RF_BOARD_NAME_MAX": board.MaxNameLen,
		"RF_BOARD_STATE_RUNNING": int64(board.StateRunning), "RF_BOARD_STATE_STOPPING": int64(board.StateStopping),
		"RF_TYPE_OPEN": int64(TypeOpen), "RF_TYPE_ACCEPT": int64(TypeAccept), "RF_TYPE_REFUSE": int64(TypeRefuse),
		"RF_TYPE_DATA_FIRST": int64(TypeDataFirst), "RF_TYPE_DATA": int64(TypeData),
		"RF_TYPE_CREDIT": int64(TypeCredit), "RF_TYPE_CLOSE": int64(TypeClose),
		"RF_TYPE_TEXT": int64(control.TypeText), "RF_TYPE_BOARD": int64(control.TypeBoard),
		"RF_TYPE_PING": int64(control.TypePing), "RF_TYPE_PONG": int64(control.TypePong),
		"RF_TYPE_DATAGRAM_FIRST": int64(FirstDatagramType),
		"RF_MAX_FRAME":           MaxFrame, "RF_FIRST_FRAGMENT_DATA": FirstFragmentData, "RF_FRAGMENT_DATA": FragmentData,
		"RF_DEFAULT_WINDOW": DefaultWindow, "RF_MAX_WINDOW": MaxWindow,
		"RF_REFUSE_NO_LISTENER": int64(RefuseNoListener), "RF_REFUSE_BACKLOG_FULL": int64(RefuseBacklogFull),
		"RF_REFUSE_NO_CHANNEL_ID": int64(RefuseNoChannelID),
	}
	f, err := os.Open("include/rfcom.h")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	define := regexp.MustCompile(`^#define\s+(RF_[A-Z0-9_]+)\s+(0x[0-9A-Fa-f]+|[0-9]+)\b`)
	got := map[string]int64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := define.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		v, err := strconv.ParseInt(m[2], 0, 64)
		if err != nil {
			t.Fatalf("%s: %v", m[1], err)
		}
		if _, dup := got[m[1]]; dup {
			t.Errorf("%s defined twice", m[1])
		}
		got[m[1]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	for name, v := range got {
		w, ok := want[name]
		switch {
		case !ok:
			t.Errorf("%s = %#x in the header has no Go counterpart in this test", name, v)
		case v != w:
			t.Errorf("%s = %#x in the header, %#x in Go", name, v, w)
		}
	}
	for name := range want {
		if _, ok := got[name]; !ok {
			t.Errorf("%s missing from the header", name)
		}
	}
	// The layout macros' formulas, spot-checked against endpoint.Layout.
	l, _ := endpoint.NewLayout(5, Slots)
	txBase := (5*queue.RxSize + 4095) &^ 4095
	if l.TxBase() != txBase || l.SectionSize() != (txBase+5*(64+64*Slots)+4095)&^4095 {
		t.Errorf("layout formulas: TxBase %d SectionSize %d", l.TxBase(), l.SectionSize())
	}
}
