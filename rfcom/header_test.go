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
	"rainforest/vmm/shmem/abi"
)

// The C header names the same ABI as the Go packages: every integer
// #define in it must equal its Go constant, and every constant listed here
// must be in the header.
func TestHeaderConstants(t *testing.T) {
	want := map[string]int64{
		"RF_PCI_VENDOR_ID": abi.VendorID, "RF_PCI_DEVICE_ID": abi.DeviceID, "RF_PCI_REVISION": abi.Revision,
		"RF_PCI_CLASS_OTHER": abi.ClassOther, "RF_PROTOCOL_FICM": abi.ProtocolFICM,
		"RF_PROTOCOL_SEGMENT": abi.ProtocolSegment,
		"RF_BAR_REGS":         abi.RegBAR, "RF_BAR_MSIX": abi.MSIXBAR, "RF_BAR_MEM": abi.MemBAR,
		"RF_REG_BAR_SIZE": abi.RegBARSize, "RF_MSIX_BAR_SIZE": abi.MSIXBARSize, "RF_MSIX_PBA_OFFSET": abi.MSIXPBAOffset,
		"RF_MAX_VECTORS": abi.MaxVectors, "RF_MAX_VECTOR": abi.MaxVector,
		"RF_INT_CONTROL_ENABLED": abi.IntControlEnabled, "RF_DOORBELL_PEER_SHIFT": abi.DoorbellPeerShift,
		"RF_DOORBELL_VECTOR_MASK": abi.DoorbellVectorMask, "RF_INT_STATUS_LAST_BIT": abi.IntStatusLastBit,
		"RF_REG_ID": abi.RegID, "RF_REG_MAX_PEERS": abi.RegMaxPeers, "RF_REG_INT_CONTROL": abi.RegIntControl,
		"RF_REG_DOORBELL": abi.RegDoorbell, "RF_REG_STATE": abi.RegState, "RF_REG_INT_STATUS": abi.RegIntStatus,
		"RF_MAX_PEERS":         abi.MaxPeers,
		"RF_CAP_LENGTH_OFFSET": abi.CapLengthOffset, "RF_CAP_STATE_TABLE_SIZE": abi.CapStateTableSize, "RF_CAP_RW_SIZE": abi.CapRWSize,
		"RF_CAP_OUTPUT_SIZE": abi.CapOutputSize, "RF_CAP_FLAGS": abi.CapFlags, "RF_CAP_NAME": abi.CapName,
		"RF_CAP_LENGTH": abi.CapLength, "RF_CAP_FLAG_RW_READONLY": abi.CapFlagRWReadOnly,
		"RF_NAME_SIZE": abi.NameSize, "RF_PAGE_SIZE": abi.PageSize, "RF_STATE_ALIVE": abi.StateAlive,
		"RF_STATE_ENTRY_SIZE": abi.StateEntrySize, "RF_STATE_ABSENT": abi.StateAbsent, "RF_STATE_CHANGE_VECTOR": abi.StateChangeVector,
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
