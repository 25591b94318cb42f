// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/**
 * @title JobEscrow
 * @notice Holds a requester's GLB for a job until the market settles it (workers and the protocol fee are
 * credited, the rest goes back to the requester) or, if nobody settles before the deadline, until anyone
 * refunds it. Credits are pull payments: each account takes its balance with {withdraw}.
 *
 * Every token movement is visible in events, so an auditor can reconcile the contract's token balance as
 * Σ {JobFunded}.amount − Σ {Withdrawn}.amount − Σ {JobRefunded}.amount, plus whatever was sent to the
 * contract directly (a donation: it is never credited to anyone and stays locked; the balance can only be
 * higher than that sum, never lower).
 *
 * Job ids are bound to the requester: {fundJob} takes a `jobKey` and the job's id is
 * {jobIdOf}(msg.sender, jobKey) = keccak256(abi.encode(requester, jobKey)). Nobody can fund (squat) the id
 * another requester will use: their funding lands on an id derived from their own address.
 *
 * Settlement is bounded: a payee must have stake in the StakingVault (active or unbonding) to be credited.
 * A payment to an address without stake is not made; its amount goes back to the requester with the rest
 * ({PaymentForfeited}). So even a compromised SETTLER_ROLE can only pay workers that put stake at risk, never
 * more than the job holds, and never the same job twice. The vault (STAKES_ROLE) marks an account as a payee
 * when its stake goes from none to some and unmarks it when it has none left ({setPayee}); the mark is the top
 * bit of the account's credit slot, so checking it costs settlement nothing.
 *
 * Roles: DEFAULT_ADMIN_ROLE (the constructor's `admin`) is the admin of every role: it grants and revokes
 * SETTLER_ROLE, PAUSER_ROLE, STAKES_ROLE (the StakingVault only) and DEFAULT_ADMIN_ROLE itself ({AccessControl-grantRole},
 * {AccessControl-revokeRole}); any holder may give up its own role ({AccessControl-renounceRole}). Handing the
 * admin over is grant-then-renounce; renouncing the last admin freezes the role set for good.
 *
 * @dev Gas layout: a job takes two storage slots, `head` (requester, amount) and `tail`. The tail holds the
 * deadline while the job is funded and is overwritten by the report root at settlement (a non-zero to non-zero
 * write, 5k gas instead of 22k for a fresh slot, and no separate status write): its value range encodes the
 * status, see {_TAIL_REFUNDED}. The head is only needed while the job is open and is cleared when it closes
 * (the storage refund pays for most of the settlement's second slot). The spec hash is not stored (a third
 * fresh slot would cost every job 22k gas): it is in {JobFunded}, whose `jobId` topic is indexed, as are the
 * requester and amount, so a closed job's full history stays verifiable from the chain.
 */
contract JobEscrow is AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice May settle jobs.
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    /// @notice May pause and unpause funding and settlement.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");
    /// @notice May mark accounts as payees (have stake): the StakingVault, nobody else.
    bytes32 public constant STAKES_ROLE = keccak256("STAKES_ROLE");

    /// @notice Lifecycle of a job, as returned by {getJob}.
    enum JobStatus {
        None,
        Funded,
        Settled,
        Refunded
    }

    /// @notice One job's settlement inside {settleBatch}.
    struct Settlement {
        bytes32 jobId;
        address[] payees;
        uint256[] amounts;
        bytes32 reportRoot;
    }

    struct Job {
        // head (slot 0), zero once the job is closed:
        address requester;
        uint96 amount; // fits any realistic GLB amount (7.9e10 GLB); checked at funding
        // tail (slot 1): 0 no job; [1, 2^64) funded (the deadline); [2^64, 2^65) refunded (flag | deadline);
        // [2^65, 2^256) settled (the report root). A Merkle root below 2^65 has probability 2^-191; rejected.
        uint256 tail;
    }

    uint256 private constant _TAIL_REFUNDED = 1 << 64;
    uint256 private constant _TAIL_SETTLED = 1 << 65;
    uint256 private constant _BPS = 10_000;
    /// @dev Top bit of a credit slot: the account has stake in the vault (may be paid). Credits stay far below.
    uint256 private constant _PAYEE = 1 << 255;

    IERC20 private immutable _token;
    address private immutable _feeRecipient;
    uint16 private immutable _feeBps;

    mapping(bytes32 jobId => Job) private _jobs;
    mapping(address account => uint256) private _credits;

    /// @notice A job with this id was already funded (ids are never reused).
    error JobEscrowJobExists(bytes32 jobId);
    /// @notice The job is not in the Funded state (unknown, already settled or already refunded).
    error JobEscrowNotFunded(bytes32 jobId, JobStatus status);
    /// @notice Funding needs a positive amount.
    error JobEscrowZeroAmount();
    /// @notice The amount does not fit the job record (2^96 − 1 GLB wei).
    error JobEscrowAmountTooLarge(uint256 amount);
    /// @notice The deadline must lie in the future.
    error JobEscrowInvalidDeadline(uint64 deadline);
    /// @notice Refunds open only once the deadline has passed.
    error JobEscrowDeadlineNotReached(bytes32 jobId, uint64 deadline);
    /// @notice `payees` and `amounts` must have the same length.
    error JobEscrowLengthMismatch(uint256 payees, uint256 amounts);
    /// @notice A payee is the zero address.
    error JobEscrowZeroPayee(bytes32 jobId);
    /// @notice Payments plus fee exceed what the job holds.
    error JobEscrowOverpaid(bytes32 jobId, uint256 available, uint256 needed);
    /// @notice The report root is below 2^65 (zero or otherwise not a hash).
    error JobEscrowInvalidReportRoot(bytes32 reportRoot);
    /// @notice The caller has no credited balance.
    error JobEscrowNothingToWithdraw(address account);
    /// @notice A constructor address is zero.
    error JobEscrowZeroAddress();
    /// @notice The fee is above 100 %.
    error JobEscrowInvalidFee(uint16 feeBps);

    /// @notice `requester` deposited `amount` for `jobId`; refundable by anyone after `deadline`.
    event JobFunded(
        bytes32 indexed jobId, address indexed requester, uint256 amount, bytes32 specHash, uint64 deadline
    );
    /// @notice `amount` was credited to `payee` for work on `jobId`.
    event PaymentCredited(bytes32 indexed jobId, address indexed payee, uint256 amount);
    /// @notice `payee` has no stake in the vault: `amount` was not paid and goes back to the requester.
    event PaymentForfeited(bytes32 indexed jobId, address indexed payee, uint256 amount);
    /// @notice `jobId` was settled: `paid` to workers, `fee` to the fee recipient, `refunded` credited back.
    event JobSettled(bytes32 indexed jobId, bytes32 reportRoot, uint256 paid, uint256 fee, uint256 refunded);
    /// @notice `account` withdrew `amount` of its credited balance.
    event Withdrawn(address indexed account, uint256 amount);
    /// @notice `amount` was sent back to `requester` because `jobId` was not settled before its deadline.
    event JobRefunded(bytes32 indexed jobId, address indexed requester, uint256 amount);

    /**
     * @notice Deploys the escrow for `token`.
     * @param token_ the GLB token (a standard ERC-20 with EIP-2612; fee-on-transfer tokens are not supported).
     * @param admin receives DEFAULT_ADMIN_ROLE (grants SETTLER_ROLE and PAUSER_ROLE).
     * @param feeRecipient_ is credited the protocol fee of every settlement.
     * @param feeBps_ the protocol fee in basis points of what workers are paid.
     */
    constructor(IERC20 token_, address admin, address feeRecipient_, uint16 feeBps_) {
        if (address(token_) == address(0) || admin == address(0) || feeRecipient_ == address(0)) {
            revert JobEscrowZeroAddress();
        }
        if (feeBps_ > _BPS) revert JobEscrowInvalidFee(feeBps_);
        _token = token_;
        _feeRecipient = feeRecipient_;
        _feeBps = feeBps_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /**
     * @notice Pulls `amount` GLB from the caller (who must have approved it) into escrow for the job
     * {jobIdOf}(caller, `jobKey`).
     * @dev Emits a {JobFunded} event (with the job id, not the key).
     * @param jobKey keccak256 of the market's job UUID; the job id derived from it and the caller must be new.
     * @param amount GLB wei to escrow, at most 2^96 − 1.
     * @param specHash commitment to the job specification.
     * @param deadline unix time after which anyone may {refund} the job if it is still unsettled.
     */
    function fundJob(bytes32 jobKey, uint256 amount, bytes32 specHash, uint64 deadline)
        external
        nonReentrant
        whenNotPaused
    {
        _fund(jobKey, amount, specHash, deadline);
    }

    /**
     * @notice Like {fundJob}, approving the escrow with an EIP-2612 permit signed by the caller first.
     * @dev A failing permit is ignored (someone may have submitted it already); the transfer then needs the
     * allowance anyway. Emits an {IERC20-Approval} event (from the token) and a {JobFunded} event.
     * @param permitDeadline the permit's expiry; `v`, `r`, `s` its signature by the caller for `amount`.
     */
    function fundJobWithPermit(
        bytes32 jobKey,
        uint256 amount,
        bytes32 specHash,
        uint64 deadline,
        uint256 permitDeadline,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external nonReentrant whenNotPaused {
        try IERC20Permit(address(_token)).permit(msg.sender, address(this), amount, permitDeadline, v, r, s) {}
            catch {}
        _fund(jobKey, amount, specHash, deadline);
    }

    /**
     * @notice Settles a funded job: credits `amounts[i]` to `payees[i]`, the fee (Σamounts × feeBps / 10000) to
     * the fee recipient and the rest of the job's amount to its requester, and records `reportRoot`.
     * @dev Only SETTLER_ROLE. A job settles once; a second call reverts with {JobEscrowNotFunded}. Zero amounts
     * are skipped; a payee without stake in the vault is not paid (its amount goes to the requester, no fee
     * on it). Σamounts + fee must not exceed the job's amount. Emits a {PaymentCredited} event per paid
     * payee, a {PaymentForfeited} event per unstaked one and a {JobSettled} event.
     * @param reportRoot Merkle root over the job's per-task settlement records (must be ≥ 2^65).
     */
    function settle(bytes32 jobId, address[] calldata payees, uint256[] calldata amounts, bytes32 reportRoot)
        external
        nonReentrant
        whenNotPaused
        onlyRole(SETTLER_ROLE)
    {
        (uint256 fee, address requester, uint256 refunded) = _settle(jobId, payees, amounts, reportRoot);
        if (refunded != 0) _credits[requester] += refunded;
        if (fee != 0) _credits[_feeRecipient] += fee;
    }

    /**
     * @notice Settles many jobs in one transaction, all or none; see {settle}.
     * @dev Only SETTLER_ROLE. The fee recipient is credited once for the whole batch, and a requester once per
     * run of consecutive jobs of theirs (order a batch by requester for the cheapest settlement).
     * Emits {PaymentCredited} and {JobSettled} events per job.
     */
    function settleBatch(Settlement[] calldata settlements)
        external
        nonReentrant
        whenNotPaused
        onlyRole(SETTLER_ROLE)
    {
        uint256 fees;
        address pendingRequester;
        uint256 pendingRefund;
        for (uint256 i; i < settlements.length; ++i) {
            (bytes32 jobId, address[] calldata payees, uint256[] calldata amounts, bytes32 root) = _item(settlements, i);
            (uint256 fee, address requester, uint256 refunded) = _settle(jobId, payees, amounts, root);
            // Unchecked: every sum here is part of tokens the escrow holds, far below 2^256.
            unchecked {
                fees += fee;
                if (requester != pendingRequester) {
                    if (pendingRefund != 0) _credits[pendingRequester] += pendingRefund;
                    pendingRequester = requester;
                    pendingRefund = 0;
                }
                pendingRefund += refunded;
            }
        }
        unchecked {
            if (pendingRefund != 0) _credits[pendingRequester] += pendingRefund;
            if (fees != 0) _credits[_feeRecipient] += fees;
        }
    }

    /**
     * @notice Sends the caller its whole credited balance.
     * @dev Works while paused, so credited funds can always leave. Emits a {Withdrawn} event.
     */
    function withdraw() external nonReentrant {
        uint256 slot = _credits[msg.sender];
        uint256 amount = slot & ~_PAYEE;
        if (amount == 0) revert JobEscrowNothingToWithdraw(msg.sender);
        _credits[msg.sender] = slot & _PAYEE;
        emit Withdrawn(msg.sender, amount);
        _token.safeTransfer(msg.sender, amount);
    }

    /**
     * @notice Sends an unsettled job's whole amount back to its requester once its deadline has passed.
     * @dev Callable by anyone, also while paused (the requester's way out). Emits a {JobRefunded} event.
     */
    function refund(bytes32 jobId) external nonReentrant {
        Job storage job = _jobs[jobId];
        uint256 tail = job.tail;
        if (tail == 0 || tail >= _TAIL_REFUNDED) revert JobEscrowNotFunded(jobId, _status(tail));
        if (block.timestamp <= tail) revert JobEscrowDeadlineNotReached(jobId, uint64(tail));
        address requester = job.requester;
        uint256 amount = job.amount;
        job.tail = _TAIL_REFUNDED | tail;
        job.requester = address(0);
        job.amount = 0;
        emit JobRefunded(jobId, requester, amount);
        _token.safeTransfer(requester, amount);
    }

    /**
     * @notice Stops funding and settlement (withdrawals and refunds stay open).
     * @dev Only PAUSER_ROLE. Emits a {Pausable-Paused} event.
     */
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /**
     * @notice Resumes funding and settlement.
     * @dev Only PAUSER_ROLE. Emits a {Pausable-Unpaused} event.
     */
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    /**
     * @notice A job's record.
     * @dev Requester and amount are cleared when the job closes and the deadline when it settles: read them
     * (and the spec hash, never stored) from the job's {JobFunded} event.
     * @return requester who funded it (0 once closed); amount what it funded, GLB wei (0 once closed);
     * deadline its refund deadline (0 once settled); status 0 none, 1 funded, 2 settled, 3 refunded;
     * reportRoot its report root (0 unless settled).
     */
    function getJob(bytes32 jobId)
        external
        view
        returns (
            address requester,
            uint256 amount,
            uint64 deadline,
            JobStatus status,
            bytes32 reportRoot
        )
    {
        Job storage job = _jobs[jobId];
        requester = job.requester;
        amount = job.amount;
        uint256 tail = job.tail;
        status = _status(tail);
        if (status == JobStatus.Settled) reportRoot = bytes32(tail);
        else deadline = uint64(tail);
    }

    /// @notice GLB wei credited to `account` and not yet withdrawn.
    function balanceOf(address account) external view returns (uint256) {
        return _credits[account] & ~_PAYEE;
    }

    /// @notice Whether `account` has stake in the vault, so settlements may credit it.
    function isPayee(address account) external view returns (bool) {
        return _credits[account] & _PAYEE != 0;
    }

    /**
     * @notice Marks `account` as having stake in the vault (`payee` true) or none left (false).
     * @dev Only STAKES_ROLE (the StakingVault calls it when a stake goes from none to some and back).
     */
    function setPayee(address account, bool payee) external onlyRole(STAKES_ROLE) {
        uint256 slot = _credits[account];
        _credits[account] = payee ? slot | _PAYEE : slot & ~_PAYEE;
    }

    /// @notice The protocol fee in basis points of what workers are paid.
    function feeBps() external view returns (uint16) {
        return _feeBps;
    }

    /// @notice The account credited with protocol fees.
    function feeRecipient() external view returns (address) {
        return _feeRecipient;
    }

    /// @notice The escrowed token (GLB).
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @notice The id of the job `requester` funds with `jobKey`: keccak256(abi.encode(requester, jobKey)).
    function jobIdOf(address requester, bytes32 jobKey) public pure returns (bytes32 jobId) {
        assembly ("memory-safe") {
            mstore(0x00, requester)
            mstore(0x20, jobKey)
            jobId := keccak256(0x00, 0x40)
        }
    }

    function _fund(bytes32 jobKey, uint256 amount, bytes32 specHash, uint64 deadline) private {
        bytes32 jobId = jobIdOf(msg.sender, jobKey);
        if (amount == 0) revert JobEscrowZeroAmount();
        if (amount > type(uint96).max) revert JobEscrowAmountTooLarge(amount);
        if (deadline <= block.timestamp) revert JobEscrowInvalidDeadline(deadline);
        Job storage job = _jobs[jobId];
        if (job.tail != 0) revert JobEscrowJobExists(jobId);
        job.requester = msg.sender;
        job.amount = uint96(amount);
        job.tail = deadline;
        emit JobFunded(jobId, msg.sender, amount, specHash, deadline);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /// @dev Credits the payees and closes the job; returns the fee and the requester's remainder to credit.
    function _settle(bytes32 jobId, address[] calldata payees, uint256[] calldata amounts, bytes32 reportRoot)
        private
        returns (uint256 fee, address requester, uint256 refunded)
    {
        if (payees.length != amounts.length) revert JobEscrowLengthMismatch(payees.length, amounts.length);
        if (uint256(reportRoot) < _TAIL_SETTLED) revert JobEscrowInvalidReportRoot(reportRoot);
        Job storage job = _jobs[jobId];
        uint256 tail = job.tail;
        if (tail == 0 || tail >= _TAIL_REFUNDED) revert JobEscrowNotFunded(jobId, _status(tail));
        requester = job.requester;
        uint256 amount = job.amount;
        job.tail = uint256(reportRoot);
        job.requester = address(0);
        job.amount = 0;

        uint256 paid;
        uint256 forfeited;
        for (uint256 i; i < payees.length; ++i) {
            // Plain loads: both arrays have `payees.length` elements (checked above); ABI bounds checks per
            // element cost ~10 % of a batched settlement. A dirty address word is refused like a zero payee.
            uint256 word;
            uint256 value;
            assembly ("memory-safe") {
                word := calldataload(add(payees.offset, shl(5, i)))
                value := calldataload(add(amounts.offset, shl(5, i)))
            }
            address payee = address(uint160(word));
            if (payee == address(0) || word >> 160 != 0) revert JobEscrowZeroPayee(jobId);
            if (value == 0) continue;
            // A single value above the job's amount must fail here: it could wrap the unchecked sums below.
            if (value > amount) revert JobEscrowOverpaid(jobId, amount, value);
            // The payee's credit slot, addressed once for the read and the write (the compiler hashes twice).
            uint256 ref;
            uint256 slot;
            assembly ("memory-safe") {
                mstore(0x00, payee)
                mstore(0x20, _credits.slot)
                ref := keccak256(0x00, 0x40)
                slot := sload(ref)
            }
            if (slot & _PAYEE == 0) {
                unchecked {
                    forfeited += value; // <= payees.length * 2^96: no overflow
                }
                emit PaymentForfeited(jobId, payee, value);
                continue;
            }
            unchecked {
                // paid <= payees.length * 2^96 and a credit is at most what the escrow holds (far below the
                // payee bit): no overflow.
                paid += value;
            }
            assembly ("memory-safe") {
                sstore(ref, add(slot, value))
            }
            emit PaymentCredited(jobId, payee, value);
        }
        unchecked {
            fee = paid * _feeBps / _BPS;
            if (paid + forfeited + fee > amount) revert JobEscrowOverpaid(jobId, amount, paid + forfeited + fee);
            refunded = amount - paid - fee;
        }
        emit JobSettled(jobId, reportRoot, paid, fee, refunded);
    }

    /// @dev `settlements[i]`'s fields without the ABI decoder's offset checks (~200 gas per job of a batch).
    /// Offsets are followed as given: malformed calldata can only yield zero words (past calldatasize), which
    /// fail as an unknown job, a zero payee or a length mismatch. `i` is below `settlements.length`.
    function _item(Settlement[] calldata settlements, uint256 i)
        private
        pure
        returns (bytes32 jobId, address[] calldata payees, uint256[] calldata amounts, bytes32 reportRoot)
    {
        assembly ("memory-safe") {
            let item := add(settlements.offset, calldataload(add(settlements.offset, shl(5, i))))
            jobId := calldataload(item)
            let p := add(item, calldataload(add(item, 0x20)))
            payees.length := calldataload(p)
            payees.offset := add(p, 0x20)
            let a := add(item, calldataload(add(item, 0x40)))
            amounts.length := calldataload(a)
            amounts.offset := add(a, 0x20)
            reportRoot := calldataload(add(item, 0x60))
        }
    }

    function _status(uint256 tail) private pure returns (JobStatus) {
        if (tail == 0) return JobStatus.None;
        if (tail < _TAIL_REFUNDED) return JobStatus.Funded;
        if (tail < _TAIL_SETTLED) return JobStatus.Refunded;
        return JobStatus.Settled;
    }
}
