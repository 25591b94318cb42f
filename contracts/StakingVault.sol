// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";
import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @notice The part of JobEscrow the vault writes: who has stake (may be paid by settlements).
interface IPayeeRegistry {
    function setPayee(address account, bool payee) external;
}

/**
 * @title StakingVault
 * @notice Workers stake GLB to be eligible for jobs. Leaving takes an unbonding period (longer than the market's
 * dispute window) during which the stake can still be slashed, so a cheater cannot withdraw before being caught.
 * A slash is split between the harmed requester, the finder (the replica that caught the cheat) and a burn.
 *
 * A slash needs evidence the slashed worker signed: the 32-byte digest of one of its commitments (a chunk
 * commitment, a signed forward answer, a training update; see `globai/protocol/signing.py`) and the worker's
 * EIP-191 signature over it, checked here with ecrecover. Each signed digest can be used for one slash only.
 * What the vault cannot check is that the commitment is *wrong*: that is the market's verification, whose
 * verdicts and evidence are published (`GET /v1/audit/...`). So a compromised SLASHER_ROLE can only slash
 * workers that signed something, once per signed digest, and never an address that never worked.
 *
 * The vault tells the escrow who has stake (active or unbonding), since only those may be paid: when a worker's
 * stake goes from none to some, and when it has none left (withdrawn or slashed), it calls
 * {IPayeeRegistry-setPayee}; the escrow must have granted this vault its STAKES_ROLE before staking opens.
 *
 * Roles: DEFAULT_ADMIN_ROLE (the `admin` of the constructor) is the admin of every role: it grants and revokes
 * SLASHER_ROLE, PAUSER_ROLE and DEFAULT_ADMIN_ROLE itself ({AccessControl-grantRole},
 * {AccessControl-revokeRole}); any holder may give up its own role ({AccessControl-renounceRole}). Handing the
 * admin over is grant-then-renounce; renouncing the last admin freezes the role set for good.
 *
 * Every token movement is visible in events: the vault's token balance is
 * Σ {Staked}.amount − Σ {Withdrawn}.amount − Σ {Slashed}.amount.
 *
 * @dev A worker's active stake, unbonding amount and release time share one storage slot.
 */
contract StakingVault is AccessControl, Pausable, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice May slash stakes.
    bytes32 public constant SLASHER_ROLE = keccak256("SLASHER_ROLE");
    /// @notice May pause and unpause staking.
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    struct Position {
        uint96 active;
        uint96 unbonding;
        uint64 releaseTime;
    }

    uint256 private constant _BPS = 10_000;

    IERC20 private immutable _token;
    IPayeeRegistry private immutable _escrow;
    uint256 private immutable _minStake;
    uint64 private immutable _unbondingPeriod;
    uint16 private immutable _requesterBps;
    uint16 private immutable _finderBps;

    mapping(address worker => Position) private _positions;
    mapping(bytes32 evidenceHash => bool) private _evidenceUsed;

    /// @notice Amounts must be positive.
    error StakingVaultZeroAmount();
    /// @notice The worker's active stake is smaller than the requested unstake.
    error StakingVaultInsufficientStake(uint256 active, uint256 requested);
    /// @notice Nothing is unbonding for the caller.
    error StakingVaultNothingToWithdraw(address worker);
    /// @notice The unbonding period has not elapsed yet.
    error StakingVaultStillUnbonding(uint64 releaseTime);
    /// @notice The worker has neither active nor unbonding stake to slash.
    error StakingVaultNothingToSlash(address worker);
    /// @notice `signature` over `evidenceHash` (EIP-191) was not made by `worker`.
    error StakingVaultBadEvidence(address worker, bytes32 evidenceHash);
    /// @notice This signed evidence has slashed already.
    error StakingVaultEvidenceUsed(bytes32 evidenceHash);
    /// @notice A constructor address is zero.
    error StakingVaultZeroAddress();
    /// @notice The unbonding period must be positive.
    error StakingVaultInvalidUnbondingPeriod();
    /// @notice The requester and finder shares add up to more than 100 %.
    error StakingVaultInvalidSplit(uint16 requesterBps, uint16 finderBps);

    /// @notice `worker` staked `amount`; its active stake is now `newStake`.
    event Staked(address indexed worker, uint256 amount, uint256 newStake);
    /// @notice `worker` moved `amount` to unbonding; all of its unbonding stake is withdrawable at `releaseTime`.
    event UnstakeRequested(address indexed worker, uint256 amount, uint64 releaseTime);
    /// @notice `worker` withdrew `amount` of unbonded stake.
    event Withdrawn(address indexed worker, uint256 amount);
    /// @notice `amount` was taken from `worker` for `jobId`: `toRequester` and `toFinder` sent, `burned` burned.
    event Slashed(
        address indexed worker,
        bytes32 indexed jobId,
        bytes32 evidenceHash,
        uint256 amount,
        uint256 toRequester,
        uint256 toFinder,
        uint256 burned
    );

    /**
     * @notice Deploys the vault.
     * @param token_ the GLB token (must implement {ERC20Burnable-burn}: the burned part of a slash is burned).
     * @param escrow_ the JobEscrow told who has stake (it must grant this vault its STAKES_ROLE).
     * @param admin receives DEFAULT_ADMIN_ROLE (grants SLASHER_ROLE and PAUSER_ROLE).
     * @param minStake_ active stake a worker needs to be eligible for jobs.
     * @param unbondingPeriod_ seconds between {requestUnstake} and {withdraw}.
     * @param requesterBps_ share of a slash sent to the harmed requester, in basis points.
     * @param finderBps_ share of a slash sent to the finder, in basis points; the rest is burned.
     */
    constructor(
        IERC20 token_,
        IPayeeRegistry escrow_,
        address admin,
        uint256 minStake_,
        uint64 unbondingPeriod_,
        uint16 requesterBps_,
        uint16 finderBps_
    ) {
        if (address(token_) == address(0) || address(escrow_) == address(0) || admin == address(0)) {
            revert StakingVaultZeroAddress();
        }
        if (unbondingPeriod_ == 0) revert StakingVaultInvalidUnbondingPeriod();
        if (uint256(requesterBps_) + finderBps_ > _BPS) revert StakingVaultInvalidSplit(requesterBps_, finderBps_);
        _token = token_;
        _escrow = escrow_;
        _minStake = minStake_;
        _unbondingPeriod = unbondingPeriod_;
        _requesterBps = requesterBps_;
        _finderBps = finderBps_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /**
     * @notice Pulls `amount` GLB from the caller (who must have approved it) into its active stake.
     * @dev Emits a {Staked} event.
     */
    function stake(uint256 amount) external nonReentrant whenNotPaused {
        if (amount == 0) revert StakingVaultZeroAmount();
        Position storage position = _positions[msg.sender];
        uint256 active = position.active;
        uint96 newStake = SafeCast.toUint96(active + amount);
        position.active = newStake;
        emit Staked(msg.sender, amount, newStake);
        if (active == 0 && position.unbonding == 0) _escrow.setPayee(msg.sender, true);
        _token.safeTransferFrom(msg.sender, address(this), amount);
    }

    /**
     * @notice Moves `amount` of the caller's active stake to unbonding. Unbonding amounts add up and the release
     * time restarts, so a worker cannot keep part of its stake "almost released" while still working.
     * @dev Emits an {UnstakeRequested} event.
     */
    function requestUnstake(uint256 amount) external whenNotPaused {
        if (amount == 0) revert StakingVaultZeroAmount();
        Position storage position = _positions[msg.sender];
        uint256 active = position.active;
        if (amount > active) revert StakingVaultInsufficientStake(active, amount);
        uint64 releaseTime = uint64(block.timestamp) + _unbondingPeriod;
        // amount <= active < 2^96 and unbonding + active never exceeds what was staked, so both casts are exact.
        position.active = uint96(active - amount);
        position.unbonding += uint96(amount);
        position.releaseTime = releaseTime;
        emit UnstakeRequested(msg.sender, amount, releaseTime);
    }

    /**
     * @notice Sends the caller its unbonded stake once the release time has passed.
     * @dev Works while paused, so unbonded stake can always leave. Emits a {Withdrawn} event.
     */
    function withdraw() external nonReentrant {
        Position storage position = _positions[msg.sender];
        uint256 amount = position.unbonding;
        if (amount == 0) revert StakingVaultNothingToWithdraw(msg.sender);
        uint64 releaseTime = position.releaseTime;
        if (block.timestamp < releaseTime) revert StakingVaultStillUnbonding(releaseTime);
        position.unbonding = 0;
        position.releaseTime = 0;
        emit Withdrawn(msg.sender, amount);
        if (position.active == 0) _escrow.setPayee(msg.sender, false);
        _token.safeTransfer(msg.sender, amount);
    }

    /**
     * @notice Takes up to `amount` from `worker`: active stake first, then unbonding stake. What was taken is
     * split: the requester share to `requester`, the finder share to `finder`, the rest burned. A zero
     * `requester` or `finder` forfeits that share to the burn.
     * @dev Only SLASHER_ROLE; works while paused (a pause must not shield a cheater). Reverts with
     * {StakingVaultBadEvidence} unless `signature` is `worker`'s EIP-191 signature over `evidenceHash`
     * (`"\x19Ethereum Signed Message:\n32" || evidenceHash`, low-s, v 27/28), and with
     * {StakingVaultEvidenceUsed} if that evidence slashed before. Emits a {Slashed} event with the amounts
     * actually taken and moved.
     * @param jobId the job the evidence is about.
     * @param evidenceHash the digest of the worker's signed commitment (it scopes chain, job, task and chunk).
     * @param signature the worker's 65-byte signature (r, s, v) over `evidenceHash`.
     */
    function slash(
        address worker,
        uint256 amount,
        bytes32 jobId,
        bytes32 evidenceHash,
        bytes calldata signature,
        address requester,
        address finder
    ) external nonReentrant onlyRole(SLASHER_ROLE) {
        if (amount == 0) revert StakingVaultZeroAmount();
        (address signer, ECDSA.RecoverError failed,) =
            ECDSA.tryRecoverCalldata(MessageHashUtils.toEthSignedMessageHash(evidenceHash), signature);
        if (failed != ECDSA.RecoverError.NoError || signer != worker) {
            revert StakingVaultBadEvidence(worker, evidenceHash);
        }
        if (_evidenceUsed[evidenceHash]) revert StakingVaultEvidenceUsed(evidenceHash);
        _evidenceUsed[evidenceHash] = true;
        Position storage position = _positions[worker];
        uint256 taken = _take(position, amount);
        if (taken == 0) revert StakingVaultNothingToSlash(worker);
        if (position.active == 0 && position.unbonding == 0) _escrow.setPayee(worker, false);
        uint256 toRequester = requester == address(0) ? 0 : taken * _requesterBps / _BPS;
        uint256 toFinder = finder == address(0) ? 0 : taken * _finderBps / _BPS;
        emit Slashed(worker, jobId, evidenceHash, taken, toRequester, toFinder, taken - toRequester - toFinder);
        if (toRequester != 0) _token.safeTransfer(requester, toRequester);
        if (toFinder != 0) _token.safeTransfer(finder, toFinder);
        if (taken != toRequester + toFinder) ERC20Burnable(address(_token)).burn(taken - toRequester - toFinder);
    }

    /**
     * @notice Stops staking and unstake requests (withdrawals and slashing go on).
     * @dev Only PAUSER_ROLE. Emits a {Pausable-Paused} event.
     */
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /**
     * @notice Resumes staking and unstake requests.
     * @dev Only PAUSER_ROLE. Emits a {Pausable-Unpaused} event.
     */
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    /// @notice `worker`'s active (slashable, eligibility-counting) stake.
    function stakeOf(address worker) external view returns (uint256) {
        return _positions[worker].active;
    }

    /// @notice `worker`'s unbonding stake and when it becomes withdrawable (0, 0 if none).
    function unbondingOf(address worker) external view returns (uint256 amount, uint64 releaseTime) {
        Position storage position = _positions[worker];
        return (position.unbonding, position.releaseTime);
    }

    /// @notice Whether `worker` has any stake in the vault, active or unbonding (a payee of a settlement must).
    function hasStake(address worker) external view returns (bool) {
        Position storage position = _positions[worker];
        return position.active != 0 || position.unbonding != 0;
    }

    /// @notice Whether `evidenceHash` has been used for a slash.
    function evidenceUsed(bytes32 evidenceHash) external view returns (bool) {
        return _evidenceUsed[evidenceHash];
    }

    /// @notice Whether `worker`'s active stake reaches {minStake}.
    function isEligible(address worker) external view returns (bool) {
        return _positions[worker].active >= _minStake;
    }

    /// @notice Active stake a worker needs to be eligible for jobs.
    function minStake() external view returns (uint256) {
        return _minStake;
    }

    /// @notice Seconds between an unstake request and its withdrawal.
    function unbondingPeriod() external view returns (uint64) {
        return _unbondingPeriod;
    }

    /// @notice Share of a slash sent to the harmed requester, in basis points.
    function requesterBps() external view returns (uint16) {
        return _requesterBps;
    }

    /// @notice Share of a slash sent to the finder, in basis points.
    function finderBps() external view returns (uint16) {
        return _finderBps;
    }

    /// @notice The staked token (GLB).
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @notice The JobEscrow the vault tells who has stake.
    function escrow() external view returns (IPayeeRegistry) {
        return _escrow;
    }

    /// @dev Removes up to `amount` from `position`, active stake first; returns what was removed.
    function _take(Position storage position, uint256 amount) private returns (uint256 taken) {
        uint256 active = position.active;
        uint256 unbonding = position.unbonding;
        uint256 fromActive = amount < active ? amount : active;
        uint256 rest = amount - fromActive;
        uint256 fromUnbonding = rest < unbonding ? rest : unbonding;
        // Both are at most the stored uint96 values they are subtracted from.
        position.active = uint96(active - fromActive);
        position.unbonding = uint96(unbonding - fromUnbonding);
        if (unbonding == fromUnbonding) position.releaseTime = 0;
        return fromActive + fromUnbonding;
    }
}
