"""The wallet's local web UI (``patientkey wallet ui``): see :mod:`.app` for the security model."""

from patientkey.wallet.ui.app import WalletAccess, create_ui_app, wallet_access
from patientkey.wallet.ui.server import UiServer

__all__ = ["UiServer", "WalletAccess", "create_ui_app", "wallet_access"]
