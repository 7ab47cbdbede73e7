"""pynetdicom as the peer: C-ECHO, C-STORE of CT/MR, release, negotiation."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom.dsutils import encode

from tests.gateway import Gateway
from tests.interop.corpus import (
    CT_IMAGE,
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    NODELAY,
    VERIFICATION,
    Item,
    Received,
    image_dataset,
    verify_stored,
)

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def as_item(ds: Dataset, name: str) -> Item:
    return Item(
        name=name,
        path=Path("/nonexistent"),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
    )


def implicit_le(ds: Dataset) -> bytes:
    """The data set as pynetdicom puts it on the wire in an Implicit VR LE context."""
    encoded = encode(ds, True, True)
    assert encoded is not None
    return encoded


def test_c_echo_and_release(session_gateway: Gateway) -> None:
    ae = AE(ae_title="IOPECHO")
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate("127.0.0.1", session_gateway.dimse_port, ae_title="DICOMGW")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert not assoc.is_aborted


def test_store_ct_and_mr_with_storage_presentation_contexts(session_gateway: Gateway) -> None:
    ae = AE(ae_title="IOPSTORE")
    ae.requested_contexts = StoragePresentationContexts
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(
        "127.0.0.1", session_gateway.dimse_port, ae_title="DICOMGW", evt_handlers=NODELAY
    )
    assert assoc.is_established
    # Every context accepted, each with the requestor's first transfer syntax.
    assert len(assoc.accepted_contexts) == len(StoragePresentationContexts) + 1
    assert assoc.rejected_contexts == []
    assert {str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts} == {IMPLICIT_LE}

    datasets = [
        image_dataset(modality, transfer_syntax)
        for modality in ("CT", "MR")
        for transfer_syntax in (EXPLICIT_LE, IMPLICIT_LE)
    ]
    statuses = [assoc.send_c_store(ds).Status for ds in datasets]
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    assert assoc.is_released
    assert statuses == [0x0000] * len(datasets)

    # pynetdicom encoded each data set for the one context it had: Implicit VR LE.
    sent = {
        str(ds.SOPInstanceUID): (
            as_item(ds, f"pynetdicom/{ds.Modality}"),
            Received(implicit_le(ds), IMPLICIT_LE),
        )
        for ds in datasets
    }
    assert session_gateway.dsn is not None
    problems = verify_stored(session_gateway.storage, session_gateway.dsn, sent)
    assert problems == [], "\n".join(problems)


def test_one_sop_class_in_several_contexts(session_gateway: Gateway) -> None:
    """A context per transfer syntax for one SOP class (dcmsend and many modalities
    propose this way): each is accepted, so a JPEG image goes as JPEG."""
    proposed = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, JPEG_BASELINE]
    ae = AE(ae_title="IOPMULTI")
    for transfer_syntax in proposed:
        ae.add_requested_context(CT_IMAGE, [transfer_syntax])
    assoc = ae.associate(
        "127.0.0.1", session_gateway.dimse_port, ae_title="DICOMGW", evt_handlers=NODELAY
    )
    assert assoc.is_established
    try:
        accepted = sorted(str(cx.transfer_syntax[0]) for cx in assoc.accepted_contexts)
        rejected = {str(cx.transfer_syntax[0]): cx.result for cx in assoc.rejected_contexts}
        assert (accepted, rejected) == (sorted(proposed), {}), (
            f"accepted {accepted}; rejected (transfer syntax: result) {rejected}"
        )
        ds = image_dataset("CT", IMPLICIT_LE)
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    sent = {
        str(ds.SOPInstanceUID): (
            as_item(ds, "pynetdicom/ct"),
            Received(implicit_le(ds), IMPLICIT_LE),
        )
    }
    assert session_gateway.dsn is not None
    problems = verify_stored(session_gateway.storage, session_gateway.dsn, sent)
    assert problems == [], "\n".join(problems)
