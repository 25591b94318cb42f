// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Burnable} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Burnable.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";

/**
 * @title GLBToken
 * @notice The GlobAI marketplace token: a fixed-supply ERC-20 with EIP-2612 permits (so a requester can
 * fund a job in one transaction) and burning (so slashed stake leaves circulation).
 * @dev The whole supply is minted once, to `treasury`; there is no mint role, so nobody can inflate it later.
 */
contract GLBToken is ERC20, ERC20Permit, ERC20Burnable {
    /// @dev The treasury must be a real account, or the supply would be lost at deployment.
    error GLBTokenZeroTreasury();

    /**
     * @notice Mints `initialSupply` (GLB wei) to `treasury`.
     * @param treasury receives the whole supply (the devnet faucet).
     * @param initialSupply the fixed total supply, in GLB wei (18 decimals).
     */
    constructor(address treasury, uint256 initialSupply) ERC20("GlobAI Token", "GLB") ERC20Permit("GlobAI Token") {
        if (treasury == address(0)) revert GLBTokenZeroTreasury();
        _mint(treasury, initialSupply);
    }
}
